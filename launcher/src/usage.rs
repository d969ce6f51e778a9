//! Command-line errors under `--log-format json`, shared by `micn-launch` and `micn` (which
//! includes this file): whether the command line asks for JSON lines, read before clap has parsed
//! it, and clap's error as one line for such a JSON object.

/// Whether the arguments ask for `--log-format json` (`--log-format json` or `--log-format=json`).
pub fn log_format_json(args: &[String]) -> bool {
    args.iter().zip(args.iter().skip(1)).any(|(a, b)| a == "--log-format" && b == "json")
        || args.iter().any(|a| a == "--log-format=json")
}

/// clap's error as one line: what is wrong and its tip, without the usage block and the pointer
/// to `--help` that follow.
pub fn clap_sentence(e: &clap::Error) -> String {
    let text = e.render().to_string();
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return missing_subcommand(&text);
    }
    let text = text.trim().strip_prefix("error:").unwrap_or(&text);
    let parts: Vec<String> = text
        .split("\n\n")
        .take_while(|part| !part.starts_with("Usage:") && !part.starts_with("For more information"))
        .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|part| !part.is_empty())
        .collect();
    format!("{}; see --help", parts.join("; "))
}

/// A command group given without its subcommand (`micn data`), whose "error" is its help text:
/// the group's name and the subcommands to choose from, out of that help.
fn missing_subcommand(help: &str) -> String {
    let group = help
        .lines()
        .find_map(|l| l.strip_prefix("Usage: "))
        .map(|usage| usage.split_whitespace().take_while(|w| !w.starts_with(['[', '<'])).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&c| c != "help")
        .collect();
    format!("`{group}` needs a subcommand: {}; see --help", commands.join(", "))
}
