//! `nodeplane-cni`: the CNI plugin binary. Reads the network configuration from
//! stdin and the CNI_* variables from the environment, prints the result (or a
//! CNI error object) on stdout; all logic lives in `control::cni`, none here.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let get = |k: &str| std::env::var(k).ok();
    let (code, out) = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => control::cni::execute(&get, &stdin),
        Err(e) => (
            1,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "code": 5,
                "msg": format!("cannot read the network configuration from stdin: {e}"),
                "details": "",
            })
            .to_string(),
        ),
    };
    let mut stdout = std::io::stdout().lock();
    if !out.is_empty() {
        let _ = writeln!(stdout, "{out}");
    }
    let _ = stdout.flush();
    std::process::exit(code);
}
