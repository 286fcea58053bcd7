//! `velvet validate`: every problem at once, with its path and line; exit 2 on any.

use super::Context;
use crate::exit::{Code, Failure};
use crate::output::emit;
use serde_json::json;
use velvet_core::config::{Config, LoadOptions, process_env};

pub fn run(ctx: &Context, skip_env: bool) -> Result<(), Failure> {
    let path = ctx.config_path();
    let loaded = Config::load(
        &path,
        LoadOptions {
            env: &process_env,
            check_env: !skip_env,
        },
    );
    match loaded {
        Ok(c) => {
            let consumers: usize = c.tokens.iter().map(|t| t.consumers.len()).sum();
            let summary = json!({
                "ok": true,
                "file": path,
                "tokens": c.tokens.len(),
                "consumers": consumers,
                "revocation_gates": c.revocation_gates.len(),
            });
            emit(ctx.output, &summary, |_| {
                println!(
                    "{}: ok ({} token(s), {consumers} consumer(s), {} revocation gate(s))",
                    path.display(),
                    c.tokens.len(),
                    c.revocation_gates.len()
                )
            });
            Ok(())
        }
        Err(e) => {
            if ctx.output == crate::Output::Json {
                let problems: Vec<_> = e
                    .problems
                    .iter()
                    .map(|p| json!({"path": p.path, "line": p.line, "column": p.column, "message": p.message}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"ok": false, "file": path, "problems": problems})
                    )
                    .expect("json")
                );
                return Err(Failure::new(
                    Code::Usage,
                    format!("{} problem(s) in {}", e.problems.len(), path.display()),
                ));
            }
            Err(e.into())
        }
    }
}
