//! Each command: ask the daemon, print data on stdout and human messages on stderr.

use anyhow::{Context, Result, anyhow, bail};
use comfy_table::{Table, presets::NOTHING};
use kapsule_dbus::session::Status;
use kapsule_dbus::{ContainerInfo, ManagerProxy, SnapshotInfo};
use zbus::Connection;

use crate::cli::{AssembleAction, Cli, Command, Format, ImageCommand, SnapshotCommand};
use crate::daemon::{connect, explain};
use crate::follow::operation;

/// Runs one command. `enter` ends with its session's status; the others with `None` when they
/// succeed.
pub async fn run(cli: Cli) -> Result<Option<Status>> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut crate::cli::command(), "kapsule", &mut std::io::stdout());
        return Ok(None);
    }
    let connection = connect().await?;
    let manager = ManagerProxy::new(&connection).await.map_err(explain)?;
    if let Command::Enter {
        name,
        cwd,
        command,
        no_create,
    } = cli.command
    {
        let args = crate::enter::EnterArgs {
            name,
            cwd,
            command,
            no_create,
        };
        return crate::enter::enter(&connection, &manager, args).await.map(Some);
    }
    if let Command::Run {
        image,
        name,
        options,
        command,
    } = cli.command
    {
        return run_ephemeral(&connection, &manager, image, name, options.values, command)
            .await
            .map(Some);
    }
    run_command(&connection, &manager, cli.command).await.map(|()| None)
}

async fn run_command(connection: &Connection, manager: &ManagerProxy<'_>, command: Command) -> Result<()> {
    match command {
        Command::Create {
            name,
            image,
            no_menu_entry,
            options,
        } => {
            // An ephemeral container goes on its own: an entry would outlive it.
            let ephemeral = options
                .values
                .get("ephemeral")
                .is_some_and(|v| bool::try_from(v).unwrap_or(false));
            operation(
                connection,
                manager.create_container(&name, image.as_deref().unwrap_or(""), options.values),
            )
            .await?;
            if !no_menu_entry && !ephemeral {
                crate::exports::menu_entry_for_new(manager, &name).await;
            }
            Ok(())
        }
        Command::Snapshot {
            command: Some(SnapshotCommand::List { name, format }),
            ..
        } => {
            let snapshots = manager.list_snapshots(&name).await.map_err(explain)?;
            print_snapshots(&name, &snapshots, format);
            Ok(())
        }
        Command::Snapshot {
            command: Some(SnapshotCommand::Rm { name, snapshot }),
            ..
        } => operation(connection, manager.delete_snapshot(&name, &snapshot)).await,
        Command::Snapshot {
            command: None,
            name,
            snapshot,
        } => {
            let name = name.context("a container name is required")?;
            operation(
                connection,
                manager.create_snapshot(&name, snapshot.as_deref().unwrap_or("")),
            )
            .await
        }
        Command::Restore { name, snapshot, yes } => {
            let container = manager.get_container_info(&name).await.map_err(explain)?;
            if container.status == "Running" {
                confirm(
                    &format!(
                        "'{name}' is running: it is stopped (its sessions end), made as it was at snapshot \
                         '{snapshot}' (what changed since is lost), and started again."
                    ),
                    yes,
                )?;
            }
            operation(connection, manager.restore_snapshot(&name, &snapshot)).await
        }
        Command::Reset { name, image, yes } => {
            manager.get_container_info(&name).await.map_err(explain)?;
            confirm(
                &format!(
                    "Resetting '{name}' replaces its own files with a fresh copy of its image: installed \
                     packages, changes in /etc, /usr and /var, and its home if it is not your host home, \
                     are lost, with the snapshots Kapsule took before upgrades. Your host home and \
                     custom mounts are kept."
                ),
                yes,
            )?;
            operation(
                connection,
                manager.reset_container(&name, image.as_deref().unwrap_or("")),
            )
            .await
        }
        Command::Clone {
            source,
            name,
            snapshot,
            no_menu_entry,
        } => {
            operation(
                connection,
                manager.clone_container(&source, &name, snapshot.as_deref().unwrap_or("")),
            )
            .await?;
            if !no_menu_entry {
                crate::exports::menu_entry_for_new(manager, &name).await;
            }
            Ok(())
        }
        Command::Upgrade {
            names,
            all,
            running,
            no_snapshot,
        } => upgrade(connection, manager, names, all, running, no_snapshot).await,
        Command::Start { name } => operation(connection, manager.start_container(&name)).await,
        Command::Stop { names, all, force, yes } => {
            let names = if all {
                let running: Vec<String> = yours(manager)
                    .await?
                    .into_iter()
                    .filter(|c| c.status == "Running")
                    .map(|c| c.name)
                    .collect();
                if running.is_empty() {
                    eprintln!("None of your containers is running.");
                    return Ok(());
                }
                confirm(
                    &format!(
                        "Stopping {} (their sessions end): {}.",
                        count(running.len()),
                        running.join(", ")
                    ),
                    yes,
                )?;
                running
            } else {
                names
            };
            each(&names, ("stops", "Stopped"), |name| async move {
                operation(connection, manager.stop_container(&name, force)).await
            })
            .await
        }
        Command::Rm { names, all, force, yes } => {
            let names = if all {
                let yours: Vec<String> = yours(manager).await?.into_iter().map(|c| c.name).collect();
                if yours.is_empty() {
                    eprintln!("You have no containers.");
                    return Ok(());
                }
                confirm(
                    &format!(
                        "Removing {} with everything in them that is not in your home or custom mounts, \
                         and what you exported from them: {}.",
                        count(yours.len()),
                        yours.join(", ")
                    ),
                    yes,
                )?;
                yours
            } else {
                names
            };
            each(&names, ("removals", "Removed"), |name| async move {
                operation(connection, manager.delete_container(&name, force)).await?;
                crate::exports::remove_all(&name);
                Ok(())
            })
            .await
        }
        Command::Export {
            name,
            app,
            bin,
            menu_entry,
            export_path,
            list,
            delete,
            all,
        } => {
            kapsule_export::check_container_name(&name)?;
            let what = Exports { app, bin, menu_entry };
            if list {
                list_exports(&name)
            } else if delete {
                delete_exports(&name, &what, all)
            } else {
                export(manager, &name, &what, export_path).await
            }
        }
        Command::List { running, format } => {
            let mut containers = manager.list_containers().await.map_err(explain)?;
            if running {
                containers.retain(|c| c.status == "Running");
            }
            containers.sort();
            print_containers(&containers, format);
            Ok(())
        }
        Command::Info { name, format } => {
            let details = manager.get_container_details(&name).await.map_err(explain)?;
            write_out(&crate::info::render(&details, format));
            Ok(())
        }
        Command::Assemble {
            action,
            file,
            name,
            replace,
            dry_run,
        } => assemble(connection, manager, action, file, name, replace, dry_run).await,
        Command::Image {
            command: ImageCommand::List { format },
        } => {
            let json = manager.list_images().await.map_err(explain)?;
            let images: Vec<serde_json::Value> =
                serde_json::from_str(&json).context("the daemon sent an image list that is not JSON")?;
            print_images(&images, format);
            Ok(())
        }
        Command::Image {
            command: ImageCommand::Delete { image },
        } => operation(connection, manager.delete_image(&image)).await,
        Command::Image {
            command: ImageCommand::Import { paths, alias },
        } => {
            let (dir, alias, _staged) = import_source(&paths, alias)?;
            let dir = dir
                .to_str()
                .ok_or_else(|| anyhow!("the path {} is not valid UTF-8", dir.display()))?;
            operation(connection, manager.import_image(dir, &alias)).await
        }
        Command::Image {
            command: ImageCommand::Refresh { image },
        } => operation(connection, manager.refresh_images(image.as_deref().unwrap_or(""))).await,
        Command::Config { key } => {
            let config = manager.get_config().await.map_err(explain)?;
            match key {
                Some(key) => match config.get(&key) {
                    Some(value) => write_out(value),
                    None => {
                        let mut known: Vec<&String> = config.keys().collect();
                        known.sort();
                        let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
                        bail!("unknown configuration key '{key}' (known: {})", known.join(", "))
                    }
                },
                None => {
                    let mut keys: Vec<_> = config.into_iter().collect();
                    keys.sort();
                    for (k, v) in keys {
                        write_out(&format!("{k} = {v}"));
                    }
                }
            }
            Ok(())
        }
        Command::Completions { .. } | Command::Enter { .. } | Command::Run { .. } => Ok(()),
    }
}

/// `kapsule run`: an ephemeral container made, entered, and (by the daemon, once the session
/// ended) removed; this waits a little for the removal, so that the next command no longer sees
/// the container, and ends as the session did.
async fn run_ephemeral(
    connection: &Connection,
    manager: &ManagerProxy<'_>,
    image: Option<String>,
    name: Option<String>,
    mut options: std::collections::HashMap<String, zbus::OwnedVariant>,
    command: Vec<String>,
) -> Result<Status> {
    let name = name.unwrap_or_else(|| {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        format!("run-{:06x}", (seed ^ std::process::id().rotate_left(16)) & 0xff_ffff)
    });
    options.insert("ephemeral".to_owned(), zbus::OwnedVariant::from(true));
    operation(
        connection,
        manager.create_container(&name, image.as_deref().unwrap_or(""), options),
    )
    .await?;
    let args = crate::enter::EnterArgs {
        name: Some(name.clone()),
        cwd: None,
        command,
        no_create: true,
    };
    let status = crate::enter::enter(connection, manager, args).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        // Gone (or the daemon with it: nothing more to wait for).
        if manager.get_container_info(&name).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    status
}

/// `kapsule assemble`: the manifest read and checked whole first (a bad line changes nothing),
/// then each container in turn, one's failure reported and the others done.
async fn assemble(
    connection: &Connection,
    manager: &ManagerProxy<'_>,
    action: AssembleAction,
    file: Option<std::path::PathBuf>,
    only: Option<String>,
    replace: bool,
    dry_run: bool,
) -> Result<()> {
    use crate::manifest;
    let path = match file {
        Some(path) => path,
        None => ["kapsule.ini", "distrobox.ini"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| anyhow!("no kapsule.ini or distrobox.ini here; give one with --file"))?,
    };
    if path.to_str().is_some_and(|p| p.contains("://")) {
        bail!(
            "{}: Kapsule reads manifests from files only; download it first",
            path.display()
        );
    }
    if replace && action == AssembleAction::Rm {
        bail!("--replace goes with assemble create");
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let at = |e: manifest::Error| anyhow!("{}: {e}", path.display());
    let sections = manifest::parse(&text)
        .and_then(|s| manifest::expand_includes(&s))
        .map_err(at)?;
    let items = sections
        .iter()
        .map(manifest::item)
        .collect::<Result<Vec<_>, _>>()
        .map_err(at)?;
    let items: Vec<manifest::Item> = match &only {
        Some(name) => {
            let found: Vec<_> = items.into_iter().filter(|i| i.name == *name).collect();
            if found.is_empty() {
                bail!("{} has no [{name}]", path.display());
            }
            found
        }
        None => items,
    };
    if items.is_empty() {
        eprintln!("{} describes no containers.", path.display());
        return Ok(());
    }
    for note in items.iter().flat_map(|i| &i.notes) {
        eprintln!("note: {}: {note}", path.display());
    }
    let names: Vec<String> = items.iter().map(|i| i.name.clone()).collect();
    let find = |name: &str| items.iter().find(|i| i.name == name).expect("an item of the manifest");
    match action {
        AssembleAction::Create => {
            each(&names, ("creations", "Assembled"), |name| async move {
                assemble_one(connection, manager, find(&name), replace, dry_run).await
            })
            .await
        }
        AssembleAction::Rm => {
            each(&names, ("removals", "Removed"), |name| async move {
                if !exists(manager, &name).await? {
                    eprintln!("'{name}' does not exist");
                    return Ok(());
                }
                if dry_run {
                    write_out(&format!("would remove '{name}' and what was exported from it"));
                    return Ok(());
                }
                operation(connection, manager.delete_container(&name, true)).await?;
                crate::exports::remove_all(&name);
                Ok(())
            })
            .await
        }
    }
}

/// Whether container `name` exists.
async fn exists(manager: &ManagerProxy<'_>, name: &str) -> Result<bool> {
    match manager.get_container_info(name).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(explain(e)),
    }
}

/// True for the daemon's `NotFound` error.
fn is_not_found(e: &zbus::Error) -> bool {
    matches!(kapsule_dbus::Error::from(e.clone()), kapsule_dbus::Error::NotFound(_))
}

/// One container of a manifest: left alone when it exists (unless replaced), else made, given
/// its menu entry and exports, and stopped when `start_now=false`.
async fn assemble_one(
    connection: &Connection,
    manager: &ManagerProxy<'_>,
    item: &crate::manifest::Item,
    replace: bool,
    dry_run: bool,
) -> Result<()> {
    let name = item.name.as_str();
    let found = exists(manager, name).await?;
    if found && !(replace || item.replace) {
        eprintln!("'{name}' exists; left as it is (replace=true or --replace makes it anew)");
        return Ok(());
    }
    if dry_run {
        write_out(&describe(item, found));
        return Ok(());
    }
    if found {
        operation(connection, manager.delete_container(name, true)).await?;
        crate::exports::remove_all(name);
    }
    match &item.clone {
        Some(source) => operation(connection, manager.clone_container(source, name, "")).await?,
        None => {
            operation(
                connection,
                manager.create_container(name, &item.image, item.options.clone()),
            )
            .await?
        }
    }
    match item.entry {
        Some(true) => crate::exports::add_menu_entry(name)?,
        Some(false) => {}
        None => crate::exports::menu_entry_for_new(manager, name).await,
    }
    if !item.exported_apps.is_empty() || !item.exported_bins.is_empty() {
        let what = Exports {
            app: item.exported_apps.clone(),
            bin: item.exported_bins.clone(),
            menu_entry: false,
        };
        let path = item.exported_bins_path.as_ref().map(|p| match p.strip_prefix("~") {
            Ok(rest) => {
                std::env::var_os("HOME").map_or_else(|| p.clone(), |home| std::path::PathBuf::from(home).join(rest))
            }
            Err(_) => p.clone(),
        });
        export(manager, name, &what, path).await?;
    }
    if item.start_now == Some(false) {
        operation(connection, manager.stop_container(name, false)).await?;
    }
    Ok(())
}

/// What `assemble create --dry-run` says it would do for `item`.
fn describe(item: &crate::manifest::Item, replacing: bool) -> String {
    let name = &item.name;
    let mut text = if replacing {
        format!("would remove '{name}' (with its exports) and ")
    } else {
        "would ".to_owned()
    };
    match &item.clone {
        Some(source) => text.push_str(&format!("clone '{source}' as '{name}'")),
        None if item.image.is_empty() => text.push_str(&format!("create '{name}' from the default image")),
        None => text.push_str(&format!("create '{name}' from {}", item.image)),
    }
    let mut options: Vec<String> = item
        .options
        .iter()
        .map(|(k, v)| format!("{k}={}", zbus::Variant::from(v.try_clone().expect("a plain value"))))
        .collect();
    options.sort();
    if !options.is_empty() {
        text.push_str(&format!(" with {}", options.join(", ")));
    }
    for (what, list) in [("apps", &item.exported_apps), ("commands", &item.exported_bins)] {
        if !list.is_empty() {
            text.push_str(&format!("; export {what} {}", list.join(" ")));
        }
    }
    if item.start_now == Some(false) {
        text.push_str("; stop it");
    }
    text
}

/// What `kapsule export` was given.
struct Exports {
    app: Vec<String>,
    bin: Vec<String>,
    menu_entry: bool,
}

impl Exports {
    fn is_empty(&self) -> bool {
        self.app.is_empty() && self.bin.is_empty() && !self.menu_entry
    }
}

/// Exports each thing asked for; one that fails is reported and the others go on.
async fn export(
    manager: &ManagerProxy<'_>,
    name: &str,
    what: &Exports,
    path: Option<std::path::PathBuf>,
) -> Result<()> {
    use kapsule_export::{Places, Record};
    if what.is_empty() {
        bail!("nothing to export: give --app, --bin or --menu-entry (or --list, --delete)");
    }
    let places = Places::from_env()?;
    let kapsule = crate::exports::kapsule_path()?;
    let bin_dir = match path {
        Some(dir) => std::path::absolute(dir)?,
        None => places.bin.clone(),
    };
    let reader = crate::enter::Reader { manager, name };
    let mut record = Record::load(&places, name)?;
    let mut failed = 0;
    let mut note = |what: &str, result: kapsule_export::Result<kapsule_export::Export>| match result {
        Ok(export) => {
            eprintln!("Exported {what} from {name}: {}", export.files[0].display());
            record.add(export);
        }
        Err(e) => {
            failed += 1;
            eprintln!("{} {what}: {e}", console::style("error:").red().bold());
        }
    };
    for app in &what.app {
        note(
            app,
            kapsule_export::export_app(&reader, &places, name, app, &kapsule).await,
        );
    }
    for command in &what.bin {
        note(
            command,
            kapsule_export::export_bin(&reader, name, command, &bin_dir, &kapsule).await,
        );
    }
    if what.menu_entry {
        note(
            "the menu entry",
            kapsule_export::export_menu_entry(&places, name, &kapsule),
        );
    }
    record.save(&places)?;
    if failed > 0 {
        bail!(
            "{failed} of {} exports failed",
            what.app.len() + what.bin.len() + usize::from(what.menu_entry)
        );
    }
    if !what.bin.is_empty() && !path_has(&bin_dir) {
        eprintln!(
            "note: {} is not on your PATH; add it to run exported commands by name",
            bin_dir.display()
        );
    }
    Ok(())
}

/// Whether `dir` is on `$PATH`.
fn path_has(dir: &std::path::Path) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|p| p == dir))
}

/// `kapsule export NAME --list`: one line per export, its files below.
fn list_exports(name: &str) -> Result<()> {
    let places = kapsule_export::Places::from_env()?;
    let record = kapsule_export::Record::load(&places, name)?;
    if record.exports.is_empty() {
        eprintln!("Nothing is exported from {name}.");
        return Ok(());
    }
    let mut table = Table::new();
    table.load_style(NOTHING).set_header(["KIND", "FROM", "FILES"]);
    for export in &record.exports {
        let files: Vec<String> = export
            .files
            .iter()
            .map(|f| {
                if f.exists() {
                    f.display().to_string()
                } else {
                    format!("{} (missing)", f.display())
                }
            })
            .collect();
        table.add_row([export.kind.label(), export.source.as_str(), &files.join("\n")]);
    }
    write_out(&table.to_string());
    Ok(())
}

/// `kapsule export NAME --delete ...`: exactly those exports' files, also when the container is
/// gone. Something that was never exported is an error, and nothing else is removed then.
fn delete_exports(name: &str, what: &Exports, all: bool) -> Result<()> {
    use kapsule_export::{Kind, Places, Record};
    let places = Places::from_env()?;
    let mut record = Record::load(&places, name)?;
    let taken = if all {
        std::mem::take(&mut record.exports)
    } else {
        if what.is_empty() {
            bail!("say what to delete: --app, --bin, --menu-entry, or --all");
        }
        let mut wanted: Vec<(Kind, &str)> = Vec::new();
        for app in &what.app {
            let id = if app.ends_with(".desktop") {
                app.clone()
            } else {
                format!("{app}.desktop")
            };
            let found = record
                .exports
                .iter()
                .find(|e| e.kind == Kind::App && (e.source == id || e.source == *app))
                .ok_or_else(|| anyhow!("no app '{app}' is exported from {name} (see --list)"))?;
            wanted.push((Kind::App, &found.source));
        }
        for command in &what.bin {
            let found = record
                .exports
                .iter()
                .find(|e| {
                    e.kind == Kind::Bin
                        && (e.source == *command || e.source.rsplit('/').next() == Some(command.as_str()))
                })
                .ok_or_else(|| anyhow!("no command '{command}' is exported from {name} (see --list)"))?;
            wanted.push((Kind::Bin, &found.source));
        }
        if what.menu_entry {
            if !record.exports.iter().any(|e| e.kind == Kind::MenuEntry) {
                bail!("{name} has no menu entry");
            }
            wanted.push((Kind::MenuEntry, ""));
        }
        let wanted: Vec<(Kind, String)> = wanted.into_iter().map(|(k, s)| (k, s.to_owned())).collect();
        wanted
            .iter()
            .filter_map(|(kind, source)| record.take(*kind, source))
            .collect()
    };
    for export in &taken {
        for file in kapsule_export::remove_files(export, name) {
            eprintln!("Removed {}", file.display());
        }
    }
    record.save(&places)?;
    eprintln!("Removed from {name}: {}", crate::exports::summary(&taken));
    Ok(())
}

fn print_containers(containers: &[ContainerInfo], format: Format) {
    match format {
        Format::Json => {
            let rows: Vec<serde_json::Value> = containers
                .iter()
                .map(|c| {
                    serde_json::json!({"name": c.name, "status": c.status, "image": c.image, "created": c.created, "mode": c.mode})
                })
                .collect();
            write_out(&serde_json::Value::Array(rows).to_string());
        }
        Format::Table => {
            if containers.is_empty() {
                eprintln!("No containers. Create one with: kapsule create <name>");
                return;
            }
            let mut table = Table::new();
            table
                .load_style(NOTHING)
                .set_header(["NAME", "STATUS", "IMAGE", "CREATED", "MODE"]);
            for c in containers {
                // Date and time are enough in a table; JSON has the full timestamp.
                let created = c.created.get(..16).unwrap_or(&c.created).replace('T', " ");
                table.add_row([c.name.as_str(), &c.status, &c.image, &created, &c.mode]);
            }
            write_out(&table.to_string());
        }
    }
}

/// `kapsule upgrade`: each container in turn, one's failure reported and the others upgraded;
/// then, for several, what became of each, and an error when any failed.
async fn upgrade(
    connection: &Connection,
    manager: &ManagerProxy<'_>,
    names: Vec<String>,
    all: bool,
    running: bool,
    no_snapshot: bool,
) -> Result<()> {
    let containers = if all {
        yours(manager).await?
    } else {
        let mut found = Vec::new();
        for name in &names {
            found.push(manager.get_container_info(name).await.map_err(explain)?);
        }
        found
    };
    let (skipped, containers): (Vec<_>, Vec<_>) =
        containers.into_iter().partition(|c| running && c.status != "Running");
    let options = || {
        let mut options = std::collections::HashMap::new();
        if no_snapshot {
            options.insert("snapshot".to_owned(), zbus::OwnedVariant::from(false));
        }
        options
    };
    if let ([], [only]) = (containers.as_slice(), skipped.as_slice()) {
        eprintln!("Skipped '{}': it is not running", only.name);
        return Ok(());
    }
    if !skipped.is_empty() {
        let names: Vec<&str> = skipped.iter().map(|c| c.name.as_str()).collect();
        eprintln!("Skipped (not running): {}", names.join(", "));
    }
    let names: Vec<String> = containers.into_iter().map(|c| c.name).collect();
    each(&names, ("upgrades", "Upgraded"), |name| async move {
        operation(connection, manager.upgrade_container(&name, options())).await
    })
    .await
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn print_snapshots(name: &str, snapshots: &[SnapshotInfo], format: Format) {
    match format {
        Format::Json => {
            let rows: Vec<serde_json::Value> = snapshots
                .iter()
                .map(|s| serde_json::json!({"name": s.name, "created": s.created, "automatic": s.automatic}))
                .collect();
            write_out(&serde_json::Value::Array(rows).to_string());
        }
        Format::Table => {
            if snapshots.is_empty() {
                eprintln!("'{name}' has no snapshots. Take one with: kapsule snapshot {name}");
                return;
            }
            let mut table = Table::new();
            table.load_style(NOTHING).set_header(["NAME", "CREATED", "TAKEN BY"]);
            for s in snapshots {
                let created = s.created.get(..19).unwrap_or(&s.created).replace('T', " ");
                let by = if s.automatic { "kapsule" } else { "you" };
                table.add_row([s.name.as_str(), &created, by]);
            }
            write_out(&table.to_string());
        }
    }
}

/// The containers of the user running this: those they created, and, among those the original
/// daemon made (which recorded no creator), those they were set up in.
async fn yours(manager: &ManagerProxy<'_>) -> Result<Vec<ContainerInfo>> {
    let uid = rustix::process::getuid().as_raw();
    let mut containers = manager.list_containers().await.map_err(explain)?;
    containers.sort();
    // Asked all at once: each answer waits on Incus.
    let details =
        futures_util::future::join_all(containers.iter().map(|c| manager.get_container_details(&c.name))).await;
    let mut yours = Vec::new();
    for (container, details) in containers.into_iter().zip(details) {
        let details = match details {
            Ok(details) => details,
            // Removed meanwhile: not one to act on.
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(explain(e)),
        };
        let owned = match details.owner {
            Some(owner) => owner == uid,
            None => details.users.contains(&uid),
        };
        if owned {
            yours.push(container);
        }
    }
    Ok(yours)
}

/// `1 container` or `N containers`.
fn count(n: usize) -> String {
    if n == 1 {
        "1 container".to_owned()
    } else {
        format!("{n} containers")
    }
}

/// Does `act` to each named container in turn; one that fails is reported and the others go on.
/// With several, says at the end what became of each (`what`: the acts, and what was done), and
/// fails when any did.
async fn each<F, Fut>(names: &[String], (acts, done): (&str, &str), act: F) -> Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    if let [only] = names {
        return act(only.clone()).await;
    }
    let (mut succeeded, mut failed) = (Vec::new(), Vec::new());
    for name in names {
        eprintln!("── {name}");
        match act(name.clone()).await {
            Ok(()) => succeeded.push(name.as_str()),
            Err(e) => {
                eprintln!("✗ {e:#}");
                failed.push(name.as_str());
            }
        }
    }
    eprintln!("── {done}: {}", list_or_none(&succeeded));
    if !failed.is_empty() {
        eprintln!("   Failed: {}", failed.join(", "));
        bail!("{} of {} {acts} failed", failed.len(), names.len());
    }
    Ok(())
}

/// Says what is about to happen and asks to go on, on a terminal; without one, goes on only with
/// `--yes` (a script must say so).
fn confirm(what: &str, yes: bool) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        bail!("{what}\nNot done: there is no terminal to ask on; add --yes to go on");
    }
    eprint!("{what}\nGo on? [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        bail!("Nothing was changed")
    }
}

/// The directory `ImportImage` reads and the alias, from what was given: a directory (its name
/// is the default alias), or a metadata tarball and a root file system, which are linked under
/// the names the daemon looks for in a temporary directory (kept until the import is done).
///
/// The daemon has no working directory of ours: the path sent is absolute. Symlinks are left
/// for the daemon to follow, with our permissions.
fn import_source(
    paths: &[std::path::PathBuf],
    alias: Option<String>,
) -> Result<(std::path::PathBuf, String, Option<tempfile::TempDir>)> {
    let absolute =
        |p: &std::path::Path| std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()));
    match paths {
        [dir] => {
            let dir = absolute(dir)?;
            let alias = match alias {
                Some(alias) => alias,
                None => dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("{} has no name to use as the alias; give --alias", dir.display()))?,
            };
            Ok((dir, alias, None))
        }
        [metadata, rootfs] => {
            let alias = alias.ok_or_else(|| anyhow!("give the image an alias with --alias when importing files"))?;
            let staged = tempfile::Builder::new().prefix("kapsule-import.").tempdir()?;
            for (file, kind, names) in [
                (metadata, "metadata", kapsule_dbus::image::METADATA_FILES),
                (rootfs, "root file system", kapsule_dbus::image::ROOTFS_FILES),
            ] {
                let file = absolute(file)?;
                if !file.is_file() {
                    bail!("{} is not a file", file.display());
                }
                let given = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                // The daemon's name for it: the one with the same ending (the compression).
                let name = names
                    .iter()
                    .find(|n| n.split_once('.').is_some_and(|(_, ext)| given.ends_with(ext)))
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: a {kind} is one of {} (by its ending)",
                            file.display(),
                            names.join(", ")
                        )
                    })?;
                std::os::unix::fs::symlink(&file, staged.path().join(name))?;
            }
            // The daemon reads it with our permissions; a temporary directory is ours alone.
            Ok((staged.path().to_owned(), alias, Some(staged)))
        }
        _ => bail!("give a directory, or a metadata tarball and a root file system"),
    }
}

fn print_images(images: &[serde_json::Value], format: Format) {
    if format == Format::Json {
        write_out(&serde_json::Value::Array(images.to_vec()).to_string());
        return;
    }
    if images.is_empty() {
        eprintln!("No local images.");
        return;
    }
    let mut table = Table::new();
    table
        .load_style(NOTHING)
        .set_header(["ALIAS", "FINGERPRINT", "DESCRIPTION", "SIZE", "UPLOADED", "PULLED FROM"]);
    for image in images {
        let aliases: Vec<&str> = image["aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["name"].as_str())
            .collect();
        let fingerprint = image["fingerprint"].as_str().unwrap_or_default();
        let size = image["size"].as_u64().unwrap_or(0);
        let uploaded = image["uploaded_at"].as_str().unwrap_or_default();
        table.add_row([
            aliases.join(", "),
            fingerprint.get(..12).unwrap_or(fingerprint).to_owned(),
            image["properties"]["description"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            format!("{:.1} MiB", size as f64 / (1024.0 * 1024.0)),
            uploaded.get(..16).unwrap_or(uploaded).replace('T', " "),
            pulled_from(image),
        ]);
    }
    write_out(&table.to_string());
}

/// `<alias> @ <server>` for an image pulled from a remote (Incus keeps it current), else empty.
fn pulled_from(image: &serde_json::Value) -> String {
    let source = &image["update_source"];
    match (source["alias"].as_str(), source["server"].as_str()) {
        (Some(alias), Some(server)) if !alias.is_empty() => {
            let host = server.strip_prefix("https://").unwrap_or(server);
            format!("{alias} @ {}", host.trim_end_matches('/'))
        }
        _ => String::new(),
    }
}

/// Data goes to stdout; a closed pipe (`kapsule list | head -1`) is not an error worth a panic.
fn write_out(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_troubles_come_with_a_hint() {
        let gone = explain(zbus::Error::FDO(Box::new(zbus::fdo::Error::NoReply(
            "Message recipient disconnected from message bus without replying".into(),
        ))));
        let text = gone.to_string();
        assert!(
            text.starts_with("the Kapsule daemon stopped while handling the request"),
            "{text}"
        );
        assert!(text.contains("\nhint: "), "{text}");
        let absent = explain(zbus::Error::FDO(Box::new(zbus::fdo::Error::ServiceUnknown("x".into()))));
        assert!(absent.to_string().contains("is not running"), "{absent}");
    }
}
