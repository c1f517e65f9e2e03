//! The one configuration model, through the real binary: a bare number is refused wherever it
//! is written, flag > environment > file > default, messaging settings read from the TOML file
//! (a node whose device secret is only in the file serves `/ws`), `tether config example` and
//! `tether config check` agree with each other and with `docs/operations.md`.

mod server_support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use server_support::{Client, Server};

/// `tether ARGS` with no `TETHER_*` variable of the test runner's environment, plus `env`.
fn tether(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TETHER_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run tether")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tether-config-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_bare_number_is_refused_with_the_right_form() {
    let dir = temp_dir("bare");
    // As a flag (the server's drain time and the messaging ack timeout alike).
    for flag in ["--drain-time", "--ack-timeout"] {
        let out = tether(&["serve", flag, "2"], &[]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(flag), "{err}");
        assert!(err.contains("2ms, 2s, 2m or 2h"), "{err}");
    }
    // As an environment variable.
    let out = tether(&["serve"], &[("TETHER_HANDSHAKE_TIMEOUT", "5")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("TETHER_HANDSHAKE_TIMEOUT"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("5s"), "{}", stderr(&out));
    // In the file: a TOML integer and a string without a unit.
    for text in ["ack_timeout = 2\n", "ack_timeout = \"2\"\n"] {
        let file = write(&dir, "bare.toml", text);
        let out = tether(&["config", "check", file.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = stderr(&out);
        assert!(err.contains("ack_timeout in"), "{err}");
        assert!(err.contains("2s"), "{err}");
        assert!(stdout(&out).is_empty());
    }
    // With a unit the same settings are fine, including hours for the ack timeout.
    let file = write(
        &dir,
        "units.toml",
        "ack_timeout = \"1h\"\ndrain_time = \"250ms\"\n",
    );
    let out = tether(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ack_timeout = \"1h\"  # file"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("drain_time = \"250ms\"  # file"),
        "{}",
        stdout(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flag_over_environment_over_file_over_default() {
    let dir = temp_dir("precedence");
    let file = write(
        &dir,
        "p.toml",
        "drain_time = \"3s\"\nbacklog = 100\nping_idle = \"20s\"\n",
    );
    let file = file.to_str().unwrap();
    let env = [("TETHER_DRAIN_TIME", "4s"), ("TETHER_BACKLOG", "200")];
    let check = |flags: &[&str], env: &[(&str, &str)]| -> String {
        let mut args = vec!["config", "check", file];
        args.extend_from_slice(flags);
        let out = tether(&args, env);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    };
    // drain_time in all three places: the flag wins.
    let all = check(&["--drain-time", "5s"], &env);
    assert!(
        all.contains("drain_time = \"5s\"  # flag --drain-time"),
        "{all}"
    );
    assert!(all.contains("backlog = 200  # env TETHER_BACKLOG"), "{all}");
    assert!(all.contains("ping_idle = \"20s\"  # file"), "{all}");
    assert!(all.contains("close_timeout = \"5s\"  # default"), "{all}");
    // Without the flag the environment wins over the file.
    let env_file = check(&[], &env);
    assert!(
        env_file.contains("drain_time = \"4s\"  # env TETHER_DRAIN_TIME"),
        "{env_file}"
    );
    // Without either, the file.
    let file_only = check(&[], &[]);
    assert!(
        file_only.contains("drain_time = \"3s\"  # file"),
        "{file_only}"
    );
    assert!(file_only.contains("backlog = 100  # file"), "{file_only}");
    // A switch given as a flag overrides the file both ways.
    let file = write(&dir, "s.toml", "echo = true\n");
    let out = tether(
        &["config", "check", file.to_str().unwrap(), "--echo=false"],
        &[],
    );
    assert!(
        stdout(&out).contains("echo = false  # flag --echo"),
        "{}",
        stdout(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_running_node_takes_its_settings_by_the_same_precedence() {
    let dir = temp_dir("node");
    // The file asks for a handshake timeout of 10 minutes and the environment for 300 ms:
    // a client that sends nothing gets 408 within a second or two.
    let file = write(
        &dir,
        "n.toml",
        "echo = true\nhandshake_timeout = \"10m\"\nshards = 1\n",
    );
    let srv = Server::start_with_env(
        &["--config", file.to_str().unwrap()],
        &[("TETHER_HANDSHAKE_TIMEOUT", "300ms")],
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut buf);
    let (status, _) = server_support::parse_status(&buf);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&buf));
    assert!(started.elapsed() < Duration::from_secs(15));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn messaging_settings_are_read_from_the_file() {
    let dir = temp_dir("messaging");
    let secret = "a-device-secret-only-in-a-file";
    let secret_file = write(&dir, "jwt-secret", &format!("{secret}\n"));
    let file = write(
        &dir,
        "m.toml",
        &format!(
            "shards = 1\njwt_secret_file = {:?}\nack_timeout = \"1h\"\ntopics_per_connection_max = 3\n",
            secret_file.to_str().unwrap()
        ),
    );
    // config check shows them, and never the secret.
    let out = tether(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ack_timeout = \"1h\"  # file"), "{text}");
    assert!(
        text.contains("topics_per_connection_max = 3  # file"),
        "{text}"
    );
    assert!(!text.contains(secret), "{text}");
    // A node with nothing but this file serves /ws with tokens signed by the file's secret.
    let srv = Server::start(&["--config", file.to_str().unwrap()]);
    let claims = tether::auth::Claims::device("dev-1", 600);
    let token = tether::auth::mint_hs256(secret.as_bytes(), &claims).unwrap();
    let client = Client::try_connect(srv.port, &format!("/ws?token={token}"));
    assert!(client.is_ok(), "upgrade refused: {:?}", client.err());
    let wrong = tether::auth::mint_hs256(b"another-secret-of-enough-bytes", &claims).unwrap();
    assert_eq!(
        Client::try_connect(srv.port, &format!("/ws?token={wrong}")).err(),
        Some(401)
    );
    // Both a secret and a secret file: refused, naming the setting.
    let both = write(
        &dir,
        "both.toml",
        &format!(
            "jwt_secret = \"{secret}\"\njwt_secret_file = {:?}\n",
            secret_file.to_str().unwrap()
        ),
    );
    let out = tether(&["config", "check", both.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("jwt_secret_file"), "{}", stderr(&out));
    assert!(!stderr(&out).contains(secret), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_example_is_complete_checks_clean_and_matches_the_docs() {
    let dir = temp_dir("example");
    let out = tether(&["config", "example"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let example = stdout(&out);
    let file = write(&dir, "example.toml", &example);
    let out = tether(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let checked = stdout(&out);
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    for spec in tether::config::SETTINGS {
        let key = spec.key;
        assert!(
            example.contains(&format!("\n{key} = ")) || example.contains(&format!("\n# {key} = ")),
            "{key} missing from `tether config example`"
        );
        assert!(
            checked.contains(key),
            "{key} missing from `tether config check`"
        );
        let (row, switch_row) = (
            format!("| `--{} ", spec.flag()),
            format!("| `--{}` ", spec.flag()),
        );
        let line = docs
            .lines()
            .find(|l| l.starts_with(&row) || l.starts_with(&switch_row))
            .unwrap_or_else(|| panic!("docs/operations.md has no row for --{}", spec.flag()));
        assert!(
            line.contains(spec.env),
            "docs row of {key} lacks {}",
            spec.env
        );
        assert!(
            line.contains(&format!("`{key}`")),
            "docs row of {key} lacks the TOML key"
        );
        let default = tether::config::Settings::default().value_toml(key);
        if let Some(default) = default {
            let shown = default.trim_matches('"');
            assert!(
                line.contains(&format!("`{shown}`")),
                "docs row of {key} does not show the default {shown}: {line}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
