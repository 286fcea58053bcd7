//! The `velvet` binary: argument parsing, logging set-up and exit codes. Each command lives in
//! `commands/`.

mod commands;
mod exit;
mod output;

use clap::{Parser, Subcommand, ValueEnum};
use exit::{Code, Failure};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "velvet",
    version,
    about = "Velvet rotates credentials: mint, distribute to every consumer, verify, then revoke."
)]
struct Cli {
    /// Configuration file (else VELVET_CONFIG, else ./velvet.yaml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a starter velvet.yaml and a fresh keyring.
    Init {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite an existing velvet.yaml (an existing keyring is kept as a backup).
        #[arg(long)]
        force: bool,
    },
    /// Run the server.
    Serve {
        /// Refuse to start if migrations are pending, instead of applying them.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Try Velvet in a throwaway directory with the embedded store; nothing else needed.
    Demo,
    /// Apply pending store migrations.
    Migrate {
        /// Show every migration and whether it is applied.
        #[arg(long)]
        list: bool,
        /// Show what would be applied, without applying it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check velvet.yaml and report every problem at once.
    Validate {
        /// Do not require the variables named by `*_env` fields to be set.
        #[arg(long)]
        skip_env: bool,
    },
    /// Start a rotation (talks to the server at VELVET_ADDR with VELVET_TOKEN).
    Rotate {
        name: String,
        /// staged, auto or emergency (default: the token's flow).
        #[arg(long)]
        flow: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Show live progress until the job ends.
        #[arg(long)]
        follow: bool,
        /// With --follow, run each awaited stage without asking.
        #[arg(long)]
        yes: bool,
        /// Read the new value of a `manual` token from stdin (asked for without echo on a
        /// terminal); one trailing newline is dropped.
        #[arg(long)]
        value_stdin: bool,
    },
    /// Rotation jobs (talks to the server).
    Rotations {
        #[command(subcommand)]
        command: RotationsCommand,
    },
    /// Check the file, keyring, store, and that every source and consumer can be reached.
    Doctor,
    /// What needs attention: failed and paused rotations, overdue and due-soon tokens, drifted
    /// consumers (talks to the server). Exits 1 when anything does.
    Status,
    /// Manage tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Service tokens for the API (talks to the server at VELVET_ADDR with VELVET_TOKEN).
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Feature flags (talks to the server).
    Flags {
        #[command(subcommand)]
        command: FlagsCommand,
    },
    /// The keyring that seals stored values.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Operators: people who pass revocation gates with TOTP (directly on the store).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Print the current TOTP code of a secret, as an authenticator app would.
    Totp {
        /// The base32 secret `operator add` printed.
        #[arg(long, env = "VELVET_TOTP_SECRET")]
        secret: String,
    },
}

#[derive(Subcommand, Debug)]
enum OperatorCommand {
    /// Add an operator; prints, once, a password, the TOTP enrolment and ten backup codes.
    Add {
        name: String,
        /// viewer, operator, revoker, auditor or admin.
        #[arg(long)]
        role: String,
    },
    /// Operators and how many backup codes each has left.
    List,
    /// Give an operator a new TOTP secret and new backup codes (the old ones stop working).
    ResetTotp { name: String },
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Adopt a credential already in use as version 1; the value is read from stdin.
    Import { name: String },
    /// Tokens under management (talks to the server).
    List,
    /// One token with its consumers and versions (fingerprints, never values).
    Show { name: String },
    /// Put the current version back on the consumers a probe found drifted (only those).
    Resync { name: String },
}

#[derive(Subcommand, Debug)]
enum RotationsCommand {
    /// Rotation jobs, newest first.
    List {
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One job with its consumers.
    Show { id: String },
    /// Act on a job: proceed_distribute, proceed_revoke, retry_failed, rollback or abort.
    Stage {
        id: String,
        action: String,
        /// A TOTP code, for a revocation gate that asks for one.
        #[arg(long)]
        totp: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Follow a job live until it ends.
    Watch { id: String },
    /// Approve a job's gated revoke as an operator (asks for the code on a terminal).
    Approve {
        id: String,
        /// Your current TOTP code.
        #[arg(long)]
        totp: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Walk the whole chain offline and report the first bad record.
    Verify {
        /// Print only the head (SEQ:HASH) to keep somewhere else.
        #[arg(long)]
        export_head: bool,
        /// A head exported earlier: the chain must still contain it.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
    },
    /// The latest records, through the server (audit.read); `--follow` keeps printing new ones.
    Tail {
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AuthCommand {
    /// Create a service token; it is printed once and never again.
    CreateToken {
        #[arg(long)]
        name: String,
        /// viewer, operator, revoker, auditor or admin.
        #[arg(long)]
        role: String,
        /// Lifetime such as 90d or 12h (default: no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// The operator who owns the token.
        #[arg(long)]
        operator: Option<String>,
    },
    /// List service tokens (never their values).
    List,
    /// Revoke a service token at once, on every replica.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
enum FlagsCommand {
    /// Every flag, its value, and where the value comes from (default, file or override).
    List,
    /// Store an override over the file's value, on every replica.
    Set {
        name: String,
        #[arg(value_enum)]
        state: OnOff,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Show keys, which is current, and how many values each seals.
    Status,
    /// Add a key and re-seal every stored value under it (resumes an interrupted run).
    Rotate {
        /// Values re-sealed per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
}

/// Logs go to stdout as JSON for `serve` when stdout is not a terminal, else to stderr.
fn init_logging(serving: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if serving { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("VELVET_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},sqlx=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if serving && !std::io::stdout().is_terminal() {
        builder.json().with_current_span(false).init();
    } else if serving {
        builder.init();
    } else {
        builder.with_writer(std::io::stderr).init();
    }
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let json = cli.output == Output::Json;
    init_logging(matches!(cli.command, Command::Serve { .. } | Command::Demo));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            f.print(json);
            ExitCode::from(f.code as u8)
        }
    }
}

/// `velvet audit tail | head -1`: once the reader goes away, printing fails with EPIPE and
/// `println!` panics. That is no error of ours: leave quietly, as a tool killed by SIGPIPE
/// would (status 141), without a panic message.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("Broken pipe") || text.contains("os error 32") {
            std::process::exit(141);
        }
        default(info);
    }));
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = commands::Context {
        config_flag: cli.config,
        output: cli.output,
    };
    match cli.command {
        Command::Init { dir, force } => commands::init::run(&ctx, &dir, force),
        Command::Serve { no_migrate } => commands::serve::serve(&ctx, no_migrate).await,
        Command::Demo => commands::demo::run(&ctx).await,
        Command::Migrate { list, dry_run } => commands::store::migrate(&ctx, list, dry_run).await,
        Command::Validate { skip_env } => commands::validate::run(&ctx, skip_env),
        Command::Doctor => commands::doctor::run(&ctx).await,
        Command::Status => commands::status::run(&ctx).await,
        Command::Tokens { command } => match command {
            TokensCommand::Import { name } => commands::store::import(&ctx, &name).await,
            TokensCommand::List => commands::tokens::list(&ctx).await,
            TokensCommand::Show { name } => commands::tokens::show(&ctx, &name).await,
            TokensCommand::Resync { name } => commands::tokens::resync(&ctx, &name).await,
        },
        Command::Rotate {
            name,
            flow,
            reason,
            follow,
            yes,
            value_stdin,
        } => {
            commands::rotations::rotate(
                &ctx,
                &name,
                commands::rotations::Kickoff {
                    flow: flow.as_deref(),
                    reason: reason.as_deref(),
                    value_stdin,
                },
                follow,
                yes,
            )
            .await
        }
        Command::Rotations { command } => match command {
            RotationsCommand::List {
                token,
                status,
                limit,
            } => commands::rotations::list(&ctx, token.as_deref(), status.as_deref(), limit).await,
            RotationsCommand::Show { id } => commands::rotations::show(&ctx, &id).await,
            RotationsCommand::Stage {
                id,
                action,
                totp,
                reason,
            } => {
                commands::rotations::stage(&ctx, &id, &action, totp.as_deref(), reason.as_deref())
                    .await
            }
            RotationsCommand::Watch { id } => commands::rotations::watch(&ctx, &id).await,
            RotationsCommand::Approve { id, totp } => {
                commands::rotations::approve(&ctx, &id, totp.as_deref()).await
            }
        },
        Command::Audit { command } => match command {
            AuditCommand::Verify {
                export_head,
                expect_head,
            } => commands::store::audit_verify(&ctx, export_head, expect_head.as_deref()).await,
            AuditCommand::Tail { lines, follow } => {
                commands::audit_tail::run(&ctx, lines, follow).await
            }
        },
        Command::Auth { command } => match command {
            AuthCommand::CreateToken {
                name,
                role,
                expires,
                operator,
            } => {
                commands::auth::create_token(
                    &ctx,
                    &name,
                    &role,
                    expires.as_deref(),
                    operator.as_deref(),
                )
                .await
            }
            AuthCommand::List => commands::auth::list(&ctx).await,
            AuthCommand::Revoke { id } => commands::auth::revoke(&ctx, &id).await,
        },
        Command::Flags { command } => match command {
            FlagsCommand::List => commands::flags::list(&ctx).await,
            FlagsCommand::Set { name, state } => {
                commands::flags::set(&ctx, &name, state == OnOff::On).await
            }
        },
        Command::Keys {
            command: KeysCommand::Status,
        } => commands::store::keys_status(&ctx).await,
        Command::Operator { command } => match command {
            OperatorCommand::Add { name, role } => {
                commands::operators::add(&ctx, &name, &role).await
            }
            OperatorCommand::List => commands::operators::list(&ctx).await,
            OperatorCommand::ResetTotp { name } => {
                commands::operators::reset_totp(&ctx, &name).await
            }
        },
        Command::Totp { secret } => commands::operators::code(&ctx, &secret),
        Command::Keys {
            command: KeysCommand::Rotate { batch },
        } => {
            if batch < 1 {
                return Err(Failure::new(Code::Usage, "--batch must be at least 1"));
            }
            commands::store::keys_rotate(&ctx, batch).await
        }
    }
}
