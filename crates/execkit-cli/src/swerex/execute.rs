//! `POST /execute`: one command, as `subprocess.run` would run it, but on
//! the target — in a subshell of a pool session, stdout and stderr each in
//! a file unlinked at once (read back base64-encoded), stdin `/dev/null`.
//! A timeout kills it and everything it started (the engine's timeout);
//! the files go with the subshell.

use serde_json::{json, Value};

use super::models::{decode, py_repr, CommandLine, Execute, Raised};
use super::target::{completed, quote, split_answer, unbase64, Workers};

/// The argv as `subprocess.run` builds it, and the program to look up
/// (upstream's `FileNotFoundError` when it is missing).
fn argv(req: &Execute) -> Result<(Vec<String>, String), Raised> {
    let argv = match (&req.command, req.shell) {
        (CommandLine::Text(t), true) => vec!["/bin/sh".into(), "-c".into(), t.clone()],
        (CommandLine::Argv(v), true) => {
            let mut a = vec!["/bin/sh".to_string(), "-c".to_string()];
            a.extend(v.iter().cloned());
            a
        }
        (CommandLine::Text(t), false) => vec![t.clone()],
        (CommandLine::Argv(v), false) => v.clone(),
    };
    if argv.is_empty() {
        return Err(Raised::builtin("IndexError", "list index out of range"));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(Raised::builtin("ValueError", "embedded null byte"));
    }
    let lookup = if req.shell {
        String::new()
    } else {
        argv[0].clone()
    };
    Ok((argv, lookup))
}

/// The command line for the pool session.
fn command_line(req: &Execute) -> Result<(String, String), Raised> {
    let (argv, lookup) = argv(req)?;
    let mut line = format!(
        "__swx_exec {} {} {}",
        u8::from(req.merge_output_streams),
        quote(req.cwd.as_deref().unwrap_or("")),
        quote(&lookup)
    );
    if let Some(env) = &req.env {
        // Exactly this environment, plus execkit's markers: what the
        // command starts must stay findable for the timeout's clean-up.
        line.push_str(r#" env -i EXECKIT_SID="$EXECKIT_SID" EXECKIT_CMD="$EXECKIT_CMD""#);
        let mut vars: Vec<_> = env.iter().collect();
        vars.sort();
        for (k, v) in vars {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Raised::builtin(
                    "ValueError",
                    format!("illegal environment variable name {}", py_repr(k)),
                ));
            }
            line.push(' ');
            line.push_str(&quote(&format!("{k}={v}")));
        }
    }
    for a in &argv {
        line.push(' ');
        line.push_str(&quote(a));
    }
    Ok((line, argv[0].clone()))
}

/// Runs the request on the target: `{stdout, stderr, exit_code}`.
pub async fn execute(workers: &Workers, req: Execute) -> Result<Value, Raised> {
    let (line, program) = command_line(&req)?;
    let timeout = req
        .timeout
        .map(|t| crate::duration::secs("timeout", t.max(0.0)))
        .transpose()
        .map_err(|e| Raised::builtin("ValueError", e))?;
    let mut worker = workers.take().await?;
    let (text, r) = worker.run(&line, None, timeout).await?;
    if r.timed_out {
        return Err(Raised::swerex(
            "CommandTimeoutError",
            format!(
                "command timed out after {} s (it and everything it started were stopped)",
                req.timeout.unwrap_or(0.0)
            ),
        ));
    }
    completed(&r, "the command")?;
    let (first, rest) = split_answer(&text);
    if let Some(n) = first.strip_prefix("swx:cwd ") {
        let errno = n.trim().parse().unwrap_or(libc::ENOENT);
        return Err(Raised::os(errno, req.cwd.as_deref().unwrap_or("")));
    }
    if let Some(n) = first.strip_prefix("swx:prog ") {
        let errno = n.trim().parse().unwrap_or(libc::ENOENT);
        return Err(Raised::os(errno, &program));
    }
    if let Some(msg) = first.strip_prefix("swx:fail ") {
        return Err(Raised::builtin("OSError", msg.to_string()));
    }
    let Some(code) = first
        .strip_prefix("swx:rc ")
        .and_then(|c| c.trim().parse::<i32>().ok())
    else {
        return Err(Raised::builtin(
            "RuntimeError",
            format!("unexpected answer from the target: {}", py_repr(first)),
        ));
    };
    let (out, err) = rest.split_once("swx:stderr\n").unwrap_or((rest, ""));
    let stdout = decode(&unbase64(out)?, None, Some("backslashreplace"))?;
    let stderr = decode(&unbase64(err)?, None, Some("backslashreplace"))?;
    if req.check && code != 0 {
        let shown = match &req.command {
            CommandLine::Text(t) => py_repr(t),
            CommandLine::Argv(v) => format!(
                "[{}]",
                v.iter().map(|a| py_repr(a)).collect::<Vec<_>>().join(", ")
            ),
        };
        let prefix = if req.error_msg.is_empty() {
            String::new()
        } else {
            format!("{}: ", req.error_msg)
        };
        return Err(Raised::swerex(
            "NonZeroExitCodeError",
            format!(
                "{prefix}command {shown} exited with {code}; stdout:\n{}\nstderr:\n{}",
                py_repr(&stdout),
                py_repr(&stderr)
            ),
        ));
    }
    Ok(json!({"stdout": stdout, "stderr": stderr, "exit_code": code}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Execute {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn argv_is_built_as_subprocess_does() {
        let (line, prog) = command_line(&req(json!({"command": ["ls", "-l", "it's"]}))).unwrap();
        assert_eq!(line, r"__swx_exec 0 '' 'ls' 'ls' '-l' 'it'\''s'");
        assert_eq!(prog, "ls");
        let (line, _) = command_line(&req(json!({
            "command": "echo $HOME", "shell": true, "cwd": "/tmp",
            "merge_output_streams": true, "env": {"A": "1"}
        })))
        .unwrap();
        assert_eq!(
            line,
            r#"__swx_exec 1 '/tmp' '' env -i EXECKIT_SID="$EXECKIT_SID" EXECKIT_CMD="$EXECKIT_CMD" 'A=1' '/bin/sh' '-c' 'echo $HOME'"#
        );
        assert!(command_line(&req(json!({"command": []}))).is_err());
        assert!(command_line(&req(json!({"command": ["x"], "env": {"A=B": "1"}}))).is_err());
    }
}
