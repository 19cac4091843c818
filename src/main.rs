//! The `unionfuse` command: parse, set up logging, run, print one line on
//! error, leave with the exit status.

use std::ffi::OsString;

use clap::Parser;
use unionfuse::cli;

fn main() {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if cli::is_compat(&argv) {
        // The fuse-overlayfs form, as container tools run a mount program.
        let debug = argv.iter().any(|a| a == "-d" || a == "--debug");
        init_logging(debug);
        exit_with(cli::run_compat(&argv));
    }
    let parsed = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // clap's first line names the problem; the usage after it is noise
            // for a script reading stderr.
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("unionfuse: {}", line.trim_start_matches("error: "));
            std::process::exit(2);
        }
    };
    init_logging(parsed.debug());
    exit_with(cli::run(parsed));
}

/// Leaves with the status of a command: silently with `Ok`'s, or with 1
/// after the one-line reason.
fn exit_with(res: Result<i32, unionfuse::Failure>) -> ! {
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("unionfuse: {e}");
            std::process::exit(1);
        }
    }
}

/// Warnings by default; with `--debug` every request (RUST_LOG also works).
fn init_logging(debug: bool) {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if debug {
            "unionfuse=trace,fuser=debug"
        } else {
            // fuser logs every reply the kernel refuses; at an unmount the
            // kernel ends requests still in flight (a RELEASE of a file
            // closed just before) and refuses their replies with ENOENT,
            // which is expected and no reason for a line in a daemon's log.
            "warn,fuser::reply=off"
        }));
    if debug {
        logger.parse_filters("unionfuse=trace,fuser=debug");
    }
    logger.init();
}
