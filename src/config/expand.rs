//! `${VAR}` expansion of string values, applied after YAML parsing so a value can never inject
//! YAML. `$${` is a literal `${`; a `$` not followed by `{` is kept as is.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExpandError {
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("unterminated ${{...}} (write $${{ for a literal ${{)")]
    Unterminated,
    #[error("invalid variable name {0:?} in ${{...}}")]
    BadName(String),
}

/// Expands every `${NAME}` in `input` by looking `NAME` up in `env`.
pub fn expand(input: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}').ok_or(ExpandError::Unterminated)?;
            let name = &tail[..end];
            if !is_var_name(name) {
                return Err(ExpandError::BadName(name.to_string()));
            }
            let value = env(name).ok_or_else(|| ExpandError::Unset(name.to_string()))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EVIL" => Some("x\nkey: injected".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_keeps_plain_dollars() {
        assert_eq!(expand("pre-${A}-post", &env).unwrap(), "pre-alpha-post");
        assert_eq!(expand("cost $5 and $A", &env).unwrap(), "cost $5 and $A");
        assert_eq!(expand("${A}${A}", &env).unwrap(), "alphaalpha");
    }

    #[test]
    fn double_dollar_brace_is_a_literal() {
        assert_eq!(expand("$${A} ${A}", &env).unwrap(), "${A} alpha");
    }

    #[test]
    fn a_value_is_data_not_yaml() {
        assert_eq!(expand("${EVIL}", &env).unwrap(), "x\nkey: injected");
    }

    #[test]
    fn unset_variable_is_named() {
        assert_eq!(
            expand("${NOPE}", &env),
            Err(ExpandError::Unset("NOPE".into()))
        );
        assert_eq!(expand("${A", &env), Err(ExpandError::Unterminated));
        assert_eq!(
            expand("${1A}", &env),
            Err(ExpandError::BadName("1A".into()))
        );
    }
}
