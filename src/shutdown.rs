//! One place decides when to stop: SIGTERM or SIGINT cancels a token that
//! every component watches; a second signal forces the exit.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Time allowed for an orderly shutdown once it starts. Under 10 s so the
/// process, log flush included, exits within 10 s of the signal.
pub const GRACE: Duration = Duration::from_secs(9);

/// A token cancelled on the first SIGTERM/SIGINT; the second one exits the
/// process with status 1 at once. Call from within the tokio runtime.
pub fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    // Register both handlers now, so a signal arriving early is not lost.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error.message = %e, "cannot install signal handlers; stop with SIGKILL");
            return token;
        }
    };
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
        cancel.cancel();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = name, "second signal: exiting without finishing shutdown");
        // The log writer may not get to flush that line before exit.
        eprintln!("mapcast: second {name}, exiting at once");
        std::process::exit(1);
    });
    token
}
