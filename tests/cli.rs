//! The command line: help everywhere, `migrate` on a fresh database, configuration errors that
//! name the file and the key.

use std::process::Command;

fn passerelle() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_passerelle"));
    c.env_remove("PASSERELLE_CONFIG").env_remove("DATABASE_URL");
    c
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("passerelle-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn help_for_every_subcommand() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["demo", "--help"],
        &["ror", "--help"],
        &["ror", "sync", "--help"],
    ] {
        let out = passerelle().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
}

#[test]
fn migrate_creates_the_sqlite_database() {
    let dir = temp_dir("migrate");
    let db = dir.join("fresh.db");
    let out = passerelle()
        .arg("migrate")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(db.exists());
    // running it again is a no-op
    let again = passerelle()
        .arg("migrate")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(again.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn configuration_errors_name_the_file_and_key() {
    let dir = temp_dir("config");
    let file = dir.join("passerelle.toml");
    std::fs::write(&file, "listen = \"not an address\"\n").unwrap();
    let out = passerelle()
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen") && err.contains("not an address"),
        "{err}"
    );
    std::fs::write(&file, "databse_url = \"sqlite://x\"\n").unwrap();
    let out = passerelle()
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("passerelle.toml") && err.contains("databse_url"),
        "{err}"
    );
    let out = passerelle()
        .args(["--config", "/nonexistent/p.toml", "serve"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/p.toml"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dev_auth_mode_refuses_to_listen_beyond_loopback() {
    let dir = temp_dir("devmode");
    let out = passerelle()
        .arg("serve")
        .env("PASSERELLE_LISTEN", "0.0.0.0:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("x.db").display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.0.0.0") && err.contains("loopback"), "{err}");
    assert!(
        !dir.join("x.db").exists(),
        "refused before touching the database"
    );
    let _ = std::fs::remove_dir_all(dir);
}
