//! `tinyscale policy …` subcommands: offline tools (`check`, `explain`)
//! run here; `get`/`set` talk to the running server and are dispatched by
//! the CLI, which knows the config and the admin socket.

use super::explain::{explain_compiled, topology_from_capture};
use super::{check_tests, Policy, Topology};
use argh::FromArgs;

/// Policy tools: check a policy file, explain what it compiles to.
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "policy")]
pub struct PolicyCmd {
    #[argh(subcommand)]
    pub cmd: PolicySub,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand)]
pub enum PolicySub {
    Explain(ExplainCmd),
    Check(CheckCmd),
    Get(GetCmd),
    Set(SetCmd),
}

/// Print the policy in force on the running server (aliases: show, view,
/// fetch).
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "get")]
pub struct GetCmd {}

/// Validate and activate a policy on the running server (policy.mode:
/// database); a rejected policy leaves the previous one in force
/// (aliases: put, update).
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "set")]
pub struct SetCmd {
    /// policy file (HuJSON)
    #[argh(option, short = 'f')]
    pub file: String,
}

/// Compile a policy against a topology (a corpus capture JSON file) and
/// print per-node packet filters, peers, routes, SSH rules and CapMaps.
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "explain")]
pub struct ExplainCmd {
    /// policy file (HuJSON)
    #[argh(option)]
    pub file: String,
    /// topology JSON (corpus capture format: topology, registration_order,
    /// tailnet_settings); default: an empty tailnet
    #[argh(option)]
    pub topology: Option<String>,
    /// output format: json (default)
    #[argh(option, short = 'o', default = "String::from(\"json\")")]
    pub output: String,
}

/// Parse and validate a policy file; exit non-zero with the error if it is
/// rejected.
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "check")]
pub struct CheckCmd {
    /// policy file (HuJSON)
    #[argh(option, short = 'f')]
    pub file: String,
    /// optional topology JSON to run the policy's tests against
    #[argh(option)]
    pub topology: Option<String>,
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn load(policy_path: &str, topo_path: Option<&str>) -> Result<(Policy, Topology), String> {
    let text = read(policy_path)?;
    let pol = Policy::parse(&text).map_err(|e| format!("{policy_path}: {e}"))?;
    let topo = match topo_path {
        Some(t) => {
            let v: serde_json::Value =
                serde_json::from_str(&read(t)?).map_err(|e| format!("{t}: {e}"))?;
            topology_from_capture(&v, Some(&pol))?
        }
        None => Topology::default(),
    };
    check_tests(&pol, &topo).map_err(|e| format!("{policy_path}: {e}"))?;
    Ok((pol, topo))
}

/// `policy check` without a server: everything but the `tests` and
/// `sshTests` blocks, which name users and groups only a live tailnet can
/// resolve. Returns how many of each were left unevaluated.
pub fn check_offline(text: &str) -> Result<(usize, usize), String> {
    let p = Policy::parse(text).map_err(|e| e.to_string())?;
    if let Some(e) = p.test_errors.first() {
        return Err(e.clone());
    }
    Ok((p.tests.len(), p.ssh_tests.len()))
}

/// Run a `policy` subcommand; returns the process exit code.
pub fn run(cmd: PolicyCmd) -> i32 {
    let res: Result<serde_json::Value, String> = match &cmd.cmd {
        PolicySub::Explain(e) => {
            if e.output != "json" {
                Err(format!(
                    "unsupported output format {:?} (use json)",
                    e.output
                ))
            } else {
                load(&e.file, e.topology.as_deref()).map(|(p, t)| explain_compiled(&p, &t))
            }
        }
        PolicySub::Check(c) => load(&c.file, c.topology.as_deref()).map(|(p, _)| {
            serde_json::json!({
                "ok": true,
                "allow_all": !p.has_filter_sections(),
            })
        }),
        // Served by the CLI against the running server (it knows the config).
        PolicySub::Get(_) | PolicySub::Set(_) => Err("policy get/set need a running server".into()),
    };
    match res {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_args() {
        let c = PolicyCmd::from_args(
            &["policy"],
            &["explain", "--file", "p.hujson", "-o", "json"],
        )
        .unwrap();
        match c.cmd {
            PolicySub::Explain(e) => {
                assert_eq!(e.file, "p.hujson");
                assert_eq!(e.output, "json");
                assert!(e.topology.is_none());
            }
            _ => panic!(),
        }
        let c = PolicyCmd::from_args(&["policy"], &["check", "--file", "x"]).unwrap();
        assert!(matches!(c.cmd, PolicySub::Check(_)));
    }
}
