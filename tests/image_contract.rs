//! The container image's contract, checked against the binary: the runtime stage of the
//! Dockerfile is read, the files it copies are laid out in a temporary root at the same paths,
//! and the binary runs there with exactly the image's environment, entrypoint and command. It
//! must come up SERVING the bundled example and pass `modeld verify`. A renamed setting, a moved
//! path or a changed ONNX Runtime version fails here instead of in a cluster.
//!
//! One substitution: the image listens on 0.0.0.0 at its EXPOSEd ports; the test checks that and
//! then binds 127.0.0.1:0, so it never touches other interfaces or collides on a port.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use common::*;

/// The instructions of the Dockerfile's last stage that make up the runtime contract.
#[derive(Debug, Default)]
struct Runtime {
    env: BTreeMap<String, String>,
    expose: Vec<u16>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    user: String,
    workdir: Option<String>,
    /// (`--from` stage, or None for the build context; source; destination)
    copies: Vec<(Option<String>, String, String)>,
}

/// Instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

fn runtime_stage(text: &str) -> Runtime {
    let all = instructions(text);
    let last_from = all.iter().rposition(|(k, _)| k == "FROM").expect("a FROM instruction");
    let mut rt = Runtime::default();
    for (keyword, args) in &all[last_from + 1..] {
        let words = || args.split_whitespace().map(str::to_owned);
        match keyword.as_str() {
            "ENV" => {
                for pair in args.split_whitespace() {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("ENV must use KEY=VALUE: {pair}"));
                    assert!(!v.contains('"') && !v.contains('$'), "keep ENV values literal: {pair}");
                    rt.env.insert(k.to_owned(), v.to_owned());
                }
            }
            "EXPOSE" => rt.expose.extend(words().map(|p| p.parse::<u16>().expect("EXPOSE a plain TCP port"))),
            "ENTRYPOINT" => rt.entrypoint = serde_json::from_str(args).expect("ENTRYPOINT in exec (JSON) form"),
            "CMD" => rt.cmd = serde_json::from_str(args).expect("CMD in exec (JSON) form"),
            "USER" => rt.user = args.clone(),
            "WORKDIR" => rt.workdir = Some(args.clone()),
            "COPY" => {
                let mut from = None;
                let mut paths = Vec::new();
                for w in words() {
                    match w.strip_prefix("--from=") {
                        Some(stage) => from = Some(stage.to_owned()),
                        None if w.starts_with("--") => {}
                        None => paths.push(w),
                    }
                }
                assert_eq!(paths.len(), 2, "one source per COPY: {args}");
                rt.copies.push((from, paths[0].clone(), paths[1].clone()));
            }
            _ => {}
        }
    }
    rt
}

/// What each runtime COPY puts into the image, from this checkout: the build stage's binary is
/// the binary under test, the ONNX Runtime stage's library is the one `make ort` fetched (so the
/// file names, hence the versions, must agree), context paths are the repository's.
fn local_source(from: Option<&str>, source: &str) -> PathBuf {
    match from {
        Some("build") => {
            assert!(source.ends_with("/target/release/modeld"), "the build stage ships the release binary: {source}");
            PathBuf::from(env!("CARGO_BIN_EXE_modeld"))
        }
        Some("onnxruntime") => {
            let name = Path::new(source).file_name().unwrap();
            let local = repo().join(".ort").join(name);
            assert!(local.exists(), "the image ships {source}, but the project pins another ONNX Runtime");
            local
        }
        Some(other) => panic!("COPY from an unknown stage `{other}`"),
        None => repo().join(source),
    }
}

/// A directory laid out like the image's file system, with links to the local files.
fn image_root(rt: &Runtime) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (from, source, dest) in &rt.copies {
        let at = root.path().join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(local_source(from.as_deref(), source), &at).unwrap();
    }
    root
}

/// An absolute path in the image, as seen in the temporary root.
fn in_root(root: &Path, value: &str) -> String {
    if value.starts_with('/') {
        root.join(value.trim_start_matches('/')).display().to_string()
    } else {
        value.to_owned()
    }
}

#[test]
fn dockerfile_runtime_contract_matches_the_binary() {
    let rt = runtime_stage(&std::fs::read_to_string(repo().join("Dockerfile")).unwrap());

    // Non-root by number, so the kubelet can enforce runAsNonRoot.
    let uid = rt.user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER must be a numeric non-root uid: {}", rt.user);
    assert_eq!(rt.entrypoint, ["modeld"]);
    assert_eq!(rt.cmd, ["serve"]);

    // Every MODELD_* variable the image sets is one `modeld serve` reads: a misspelt name would
    // otherwise be ignored without a word.
    let help = Command::new(env!("CARGO_BIN_EXE_modeld")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for key in rt.env.keys().filter(|k| k.starts_with("MODELD_")) {
        assert!(
            help.contains(&format!("[env: {key}=")),
            "the Dockerfile sets {key}, which `modeld serve` does not read"
        );
    }
    // Listeners: reachable from outside the container, on the ports the image declares.
    for key in ["MODELD_GRPC_ADDR", "MODELD_ADMIN_ADDR", "MODELD_HTTP_ADDR"] {
        let addr: SocketAddr = rt.env[key].parse().unwrap();
        assert!(addr.ip().is_unspecified(), "{key} must listen on all interfaces in a container");
        assert!(rt.expose.contains(&addr.port()), "{key} port {} is not EXPOSEd", addr.port());
    }

    let root = image_root(&rt);
    let entry = root.path().join("usr/local/bin").join(&rt.entrypoint[0]);
    assert!(entry.exists(), "ENTRYPOINT {} is not on the image's PATH", rt.entrypoint[0]);
    let model_root = rt.env.get("MODELD_MODEL_ROOT").expect("the image sets its model root");

    let mut command = Command::new(&entry);
    command
        .args(&rt.cmd)
        .env_clear()
        .envs(rt.env.iter().map(|(k, v)| (k.clone(), in_root(root.path(), v))))
        .env("MODELD_GRPC_ADDR", "127.0.0.1:0")
        .env("MODELD_ADMIN_ADDR", "127.0.0.1:0")
        .env("MODELD_HTTP_ADDR", "127.0.0.1:0")
        .current_dir(in_root(root.path(), rt.workdir.as_deref().unwrap_or("/")));
    let mut daemon = Daemon::spawn(command);

    // The bundled example serves, and its golden rows come back from the live version.
    let bundle = PathBuf::from(in_root(root.path(), model_root)).join(TASK).join("current");
    let verify = Command::new(&entry)
        .args(["verify", "--wait-secs", "60", "--addr", &format!("http://{}", daemon.grpc)])
        .arg("--bundle")
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "modeld verify against the image's settings failed:\n{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    signal(&daemon.child, "TERM");
    let status = daemon.child.wait().unwrap();
    let log: Vec<String> = daemon.log.take().expect("log not taken").map_while(Result::ok).collect();
    assert!(status.success(), "exit {status:?}; log:\n{}", log.join("\n"));
}
