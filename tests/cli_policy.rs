//! `tinyscale policy get|set` through the binary against a running admin
//! plane (policy.mode: database): set, read back, a rejected policy keeps
//! the previous one.

mod common;

#[test]
fn policy_get_and_set_through_the_cli() {
    let env = common::admin_plane(
        "clipol",
        "listen_addr: 127.0.0.1:18081\ntls_listen_addr: \"\"\npolicy:\n  mode: database\n",
    );
    let (dir, server) = (&env.dir, &env.server);
    let cli = |args: &[&str]| env.cli(args);
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
}
