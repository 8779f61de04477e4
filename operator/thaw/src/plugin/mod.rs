//! `kubectl thaw`: the `thaw` binary as a kubectl plugin. Installed as
//! `kubectl-thaw` (kubectl runs it for `kubectl thaw ...`) it takes `status`
//! and `invoke` directly; `thaw kubectl status ...` does the same.
//!
//! Pure parts: [`report`] (what is said about a Function, from its status,
//! its pods and their gates, at an injected time), [`render`] (text, JSON,
//! YAML) and [`human`] (kubectl's durations). Kubernetes lives in
//! [`cluster`], [`watch`] and [`invoke`].

pub mod cluster;
pub mod human;
pub mod invoke;
pub mod render;
pub mod report;
pub mod watch;

use std::io::Write;

use anyhow::{Context, bail};
use k8s_openapi::jiff::Timestamp;

use cluster::{KubeFlags, Selection};
use render::{Format, render};

/// The name kubectl finds the plugin by on PATH.
pub const PLUGIN_NAME: &str = "kubectl-thaw";

/// `kubectl thaw`, when the binary runs as `kubectl-thaw`.
#[derive(clap::Parser)]
#[command(
    name = "kubectl thaw",
    bin_name = "kubectl thaw",
    version,
    about = "Inspect and call thaw Functions: each instance's life at a glance"
)]
pub struct KubectlThaw {
    #[command(flatten)]
    pub args: PluginArgs,
}

#[derive(clap::Args)]
pub struct PluginArgs {
    #[command(flatten)]
    pub kube: KubeFlags,
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// A Function's state and one line per instance (docs/kubectl-thaw.md).
    Status(StatusArgs),
    /// Send one request to a Function through the activator and print the
    /// answer with its cold-start time.
    Invoke(invoke::InvokeArgs),
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The Function; every Function of the namespace when unset.
    pub function: Option<String>,
    /// Every Function in every namespace.
    #[arg(short = 'A', long, conflicts_with = "function")]
    pub all_namespaces: bool,
    /// Keep watching; print again whenever something other than a clock changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// Whether this process was started as the kubectl plugin.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .is_some_and(|argv0| is_plugin_name(&argv0))
}

/// `argv[0]` names the plugin: `kubectl-thaw`, by any path (kubectl runs it
/// by its full path), with or without `.exe`.
pub fn is_plugin_name(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_stem()
        .is_some_and(|stem| stem == PLUGIN_NAME)
}

pub async fn run(args: PluginArgs) -> anyhow::Result<()> {
    let (client, namespace) = cluster::connect(&args.kube)
        .await
        .context("connecting to the cluster")?;
    match args.command {
        PluginCommand::Status(status) => {
            let selection = match (status.all_namespaces, status.function) {
                (true, _) => Selection::All,
                (false, Some(name)) => Selection::One { namespace, name },
                (false, None) => Selection::Namespace(namespace),
            };
            let mut out = std::io::stdout();
            if status.watch {
                if matches!(selection, Selection::One { .. }) {
                    // A name that does not exist is an error, not an empty watch.
                    cluster::read(&client, &selection).await?;
                }
                return watch::watch(&client, &selection, status.output, |text| {
                    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
                })
                .await;
            }
            let (functions, pods) = cluster::read(&client, &selection).await?;
            let reports = watch::reports(&client, &functions, &pods, Timestamp::now()).await;
            let single = matches!(selection, Selection::One { .. });
            out.write_all(render(&reports, status.output, single)?.as_bytes())?;
        }
        PluginCommand::Invoke(args) => {
            let outcome = invoke::invoke(&client, &namespace, &args).await?;
            eprint!("{}", outcome.summary());
            let mut out = std::io::stdout();
            out.write_all(&outcome.body)?;
            out.flush()?;
            if outcome.status.is_client_error() || outcome.status.is_server_error() {
                bail!("the function answered {}", outcome.status);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
