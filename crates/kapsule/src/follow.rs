//! Following an operation: its messages and progress on stderr, as bars and spinners on a
//! terminal and as plain lines otherwise; its end as the command's result.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use kapsule_dbus::{MessageKind, OperationStatus};
use zbus::{Connection, MessageStream, OwnedObjectPath};

use crate::daemon::explain;

/// What the client listens to while an operation runs: its signals, and on a bus the daemon's
/// name (a daemon that goes away mid-operation must not leave the client waiting forever; on
/// the daemon's socket, the connection itself ends then).
#[derive(Debug)]
pub struct Subscription {
    signals: MessageStream,
    owner_changes: Option<zbus::fdo::NameOwnerChangedStream>,
}

/// Subscribes to every operation signal, before the call that starts the operation: an
/// operation may report (or even finish) before its path is known to the client.
pub async fn subscribe(connection: &Connection) -> Result<Subscription> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(kapsule_dbus::OPERATION_INTERFACE)
        .path_namespace(kapsule_dbus::OPERATIONS_PATH)
        .build()?;
    let signals = MessageStream::for_match_rule(rule, connection, None).await?;
    let owner_changes = if connection.is_bus() {
        let changes = zbus::fdo::DBusProxy::new(connection)
            .await?
            .receive_name_owner_changed_with_args(&[(0, kapsule_dbus::BUS_NAME)])
            .await?;
        Some(changes)
    } else {
        None
    };
    Ok(Subscription { signals, owner_changes })
}

/// Shows the operation at `path` until it completes; an error with its message if it failed.
pub async fn follow(connection: &Connection, subscription: Subscription, path: &OwnedObjectPath) -> Result<()> {
    let Subscription {
        mut signals,
        mut owner_changes,
    } = subscription;
    let terminal = console::Term::stderr().is_term();
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    // Without a terminal: each bar's description, and when its text was last printed and what
    // it began with ("rootfs: "), so a download says how far it got every few seconds, and at
    // each new file, instead of at every percent.
    let mut plain: HashMap<String, (String, Option<(std::time::Instant, String)>)> = HashMap::new();
    let op = kapsule_dbus::OperationProxy::uncached(connection, path.clone()).await?;
    loop {
        let message = tokio::select! {
            message = signals.next() => match message {
                Some(message) => message?,
                None => break,
            },
            Some(_) = next_change(&mut owner_changes) => {
                for bar in bars.values() {
                    bar.abandon();
                }
                bail!(
                    "the Kapsule daemon stopped while the operation was running; its outcome is unknown\n\
                     hint: check `journalctl -u kapsule-daemon` and `kapsule list`"
                );
            }
        };
        let header = message.header();
        if header.path().map(|p| p.as_str()) != Some(path.as_str()) {
            continue;
        }
        let member = header.member().map(|m| m.to_string()).unwrap_or_default();
        match member.as_str() {
            "Message" => {
                let (kind, text, _indent): (i32, String, i32) = message.body().deserialize()?;
                let line = match MessageKind::from_wire(kind) {
                    Some(MessageKind::Success) => format!("{} {text}", console::style("✓").green()),
                    Some(MessageKind::Warning) => format!("{} {text}", console::style("!").yellow()),
                    Some(MessageKind::Error) => format!("{} {text}", console::style("✗").red()),
                    Some(MessageKind::Hint) => format!("{} {text}", console::style("hint:").yellow()),
                    Some(MessageKind::Dim) => console::style(text).dim().to_string(),
                    Some(MessageKind::Info) | None => text,
                };
                print_line(&bars, &line);
            }
            "ProgressStarted" => {
                let (id, description, total, _indent): (String, String, i32, i32) = message.body().deserialize()?;
                if terminal {
                    let bar = if total > 0 {
                        let bar = ProgressBar::new(u64::try_from(total).unwrap_or(0));
                        bar.set_style(
                            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                                .expect("valid template"),
                        );
                        bar.set_prefix(description.clone());
                        bar
                    } else {
                        let bar = ProgressBar::new_spinner();
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bar
                    };
                    if total <= 0 {
                        bar.set_message(description);
                    }
                    bars.insert(id, bar);
                } else {
                    eprintln!("{description}...");
                    plain.insert(id, (description, None));
                }
            }
            "ProgressUpdate" => {
                let (id, current, _rate): (String, i32, f64) = message.body().deserialize()?;
                if let Some(bar) = bars.get(&id) {
                    bar.set_position(u64::try_from(current).unwrap_or(0));
                }
            }
            "ProgressTextUpdate" => {
                let (id, text): (String, String) = message.body().deserialize()?;
                match bars.get(&id) {
                    Some(bar) => bar.set_message(text),
                    None if !terminal => {
                        let stage = text.split_once(": ").map(|(s, _)| s).unwrap_or_default().to_owned();
                        let last = plain.get_mut(&id).map(|(_, last)| last);
                        let due = match &last {
                            Some(Some((at, was))) => *was != stage || at.elapsed() >= Duration::from_secs(2),
                            _ => true,
                        };
                        if due {
                            eprintln!("  {text}");
                            if let Some(last) = last {
                                *last = Some((std::time::Instant::now(), stage));
                            }
                        }
                    }
                    None => {}
                }
            }
            "ProgressCompleted" => {
                let (id, ok, text): (String, bool, String) = message.body().deserialize()?;
                if let Some(bar) = bars.remove(&id) {
                    bar.finish_and_clear();
                }
                if let Some((description, _)) = plain.remove(&id)
                    && !text.is_empty()
                {
                    let mark = if ok { "done" } else { "failed" };
                    eprintln!("{description}: {mark}: {text}");
                }
            }
            "Completed" => {
                let (ok, text): (bool, String) = message.body().deserialize()?;
                for bar in bars.values() {
                    bar.finish_and_clear();
                }
                if ok {
                    return Ok(());
                }
                bail!("{text}");
            }
            _ => {}
        }
    }
    // The stream ended (the daemon went away): the operation's own status is the last word.
    match op.status().await.as_deref().map(OperationStatus::parse) {
        Ok(Some(OperationStatus::Completed)) => Ok(()),
        Ok(_) => bail!("{}", op.error_message().await.unwrap_or_default()),
        Err(e) => bail!("lost the connection to the Kapsule daemon: {e}"),
    }
}

/// The next change of the daemon's name; never, without a bus.
async fn next_change(changes: &mut Option<zbus::fdo::NameOwnerChangedStream>) -> Option<zbus::fdo::NameOwnerChanged> {
    match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

fn print_line(bars: &HashMap<String, ProgressBar>, line: &str) {
    match bars.values().next() {
        // Printed above the bar, which keeps drawing below.
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    }
}

/// Runs a call that starts an operation and follows it to its end. The subscription is made
/// before the call runs (the call future is lazy), so no early signal is missed.
pub(crate) async fn operation(
    connection: &Connection,
    call: impl std::future::Future<Output = zbus::Result<zbus::OwnedObjectPath>>,
) -> Result<()> {
    let signals = subscribe(connection).await?;
    let path = call.await.map_err(explain)?;
    follow(connection, signals, &path).await
}
