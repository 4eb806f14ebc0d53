//! `tinyscale policy get|set` through the binary against a running admin
//! plane (policy.mode: database): set, read back, a rejected policy keeps
//! the previous one.

use std::process::Command;

#[test]
fn policy_get_and_set_through_the_cli() {
    let dir = std::env::temp_dir().join(format!("tinyscale-clipol-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nunix_socket: run/admin.sock\nlisten_addr: 127.0.0.1:18081\ntls_listen_addr: \"\"\npolicy:\n  mode: database\n",
            dir.display()
        ),
    )
    .unwrap();
    let (cfg, _) = tinyscale::config::load(Some(&config)).unwrap();
    let server = tinyscale::app::build(cfg).unwrap().server.clone();
    tinyscale::api::spawn(server.clone()).unwrap();
    let cli = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("TINYSCALE_CONFIG")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let good = dir.join("good.hujson");
    std::fs::write(&good, "{\n  // members reach their own devices\n  \"acls\": [{\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self:*\"]}],\n}\n").unwrap();
    let (code, out, err) = cli(&["policy", "set", "--file", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(&["policy", "get"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("autogroup:self:*") && out.contains("// members"),
        "{out}"
    );
    assert!(server.policy_text().unwrap().contains("autogroup:self"));

    let bad = dir.join("bad.hujson");
    std::fs::write(
        &bad,
        "{\"acls\": [{\"action\": \"accept\", \"src\": [\"group:none\"], \"dst\": [\"*:*\"]}]}",
    )
    .unwrap();
    let (code, _, err) = cli(&["policy", "set", "--file", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid policy"), "{err}");
    let (_, out, _) = cli(&["policy", "get"]);
    assert!(
        out.contains("autogroup:self:*"),
        "previous policy stays: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
