//! The `unionfuse` command: parse, set up logging, run, print one line on error.

use clap::Parser;

fn main() {
    let cli = match unionfuse::cli::Cli::try_parse() {
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
    let debug = matches!(&cli.command, unionfuse::cli::Cmd::Mount(m) if m.debug);
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if debug {
            "unionfuse=trace,fuser=debug"
        } else {
            "warn"
        }));
    if debug {
        logger.parse_filters("unionfuse=trace,fuser=debug");
    }
    logger.init();
    if let Err(msg) = unionfuse::cli::run(cli) {
        eprintln!("unionfuse: {msg}");
        std::process::exit(1);
    }
}
