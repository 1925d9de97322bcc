//! Redaction of URLs for messages and logs.
//!
//! URLs may carry secrets (a chat bot's access token in the query, a signed download link), so
//! anything printed shows only the scheme and the host. This module owns that rule and nothing
//! else.

/// `https://open.feishu.cn/open-apis/bot/v2/hook/abc` -> `https://open.feishu.cn`.
/// A string that is not a URL is replaced entirely, because we cannot know which part is secret.
pub fn url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) => match u.host_str() {
            Some(host) => match u.port() {
                Some(port) => format!("{}://{}:{}", u.scheme(), host, port),
                None => format!("{}://{}", u.scheme(), host),
            },
            None => format!("{}:(redacted)", u.scheme()),
        },
        Err(_) => "(unparseable URL, redacted)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_only_scheme_host_and_port() {
        assert_eq!(
            super::url("https://oapi.dingtalk.com/robot/send?access_token=SECRET"),
            "https://oapi.dingtalk.com"
        );
        assert_eq!(
            super::url("http://127.0.0.1:8080/x/y"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            super::url("https://user:pw@host.example/p"),
            "https://host.example"
        );
        assert_eq!(
            super::url("not a url SECRET"),
            "(unparseable URL, redacted)"
        );
    }
}
