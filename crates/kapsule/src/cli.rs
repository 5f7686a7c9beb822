//! The command line: subcommands, and the create flags generated from the option schema.

use std::collections::HashMap;

use clap::{ArgAction, Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use kapsule_dbus::options::{OPTIONS, OptionKind};
use zbus::{OwnedVariant, Variant};

/// Persistent, host-like development containers on Incus.
#[derive(Parser, Debug)]
#[command(name = "kapsule", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container (and start it).
    Create {
        /// Name of the new container.
        name: String,
        /// Image: local:<alias>, <remote>:<alias> or <alias> (default: the configured default_image).
        #[arg(long, short)]
        image: Option<String>,
        /// Make no "NAME (Kapsule)" terminal entry in your menu (the `menu_entries`
        /// configuration key turns them off for every create).
        #[arg(long)]
        no_menu_entry: bool,
        #[command(flatten)]
        options: CreateFlags,
    },
    /// Enter a container as yourself: your login shell, or a command.
    ///
    /// Without a name, enters the configured default container (creating it from the default
    /// image the first time). The command's arguments are passed exactly as given, and its exit
    /// status is kapsule's.
    Enter {
        /// The container (default: the configured default_container).
        name: Option<String>,
        /// Working directory inside (default: the current one, or your home when the container
        /// does not have it). An explicit directory must exist there.
        #[arg(long, value_name = "DIR")]
        cwd: Option<std::path::PathBuf>,
        /// Fail when the default container is missing instead of making it (what exported apps
        /// and commands run).
        #[arg(long)]
        no_create: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Run a throwaway container: create it, enter it (your shell, or a command), and have it
    /// removed when the session ends.
    ///
    /// The daemon removes it once nobody is in it any more, also when this command is killed
    /// or the daemon restarts meanwhile. The exit status is the session's. Takes create's
    /// flags (`--image`, `--no-mount-home`, `--additional-packages`, ...).
    #[command(visible_alias = "ephemeral")]
    Run {
        /// Image: local:<alias>, <remote>:<alias> or <alias> (default: the configured default_image).
        #[arg(long, short)]
        image: Option<String>,
        /// The container's name (default: run- and a random suffix).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        options: CreateFlags,
        /// The command and its arguments, after `--` (default: your login shell).
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List containers.
    #[command(visible_alias = "ls")]
    List {
        /// Only running containers.
        #[arg(long)]
        running: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show everything about one container: options, owner, users, image, exports, snapshots.
    Info {
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Start a container.
    Start { name: String },
    /// Stop containers.
    Stop {
        /// The containers to stop.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Every running container of yours (you are asked first on a terminal).
        #[arg(long, short)]
        all: bool,
        /// Kill them instead of waiting for a clean shutdown.
        #[arg(long, short)]
        force: bool,
        /// With --all: do not ask (needed without a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Remove containers (running ones only with --force), and what you exported from them.
    #[command(visible_alias = "remove")]
    Rm {
        /// The containers to remove.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Every container of yours (you are asked first on a terminal).
        #[arg(long, short)]
        all: bool,
        /// Stop them first if they run.
        #[arg(long, short)]
        force: bool,
        /// With --all: do not ask (needed without a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Take a snapshot of a container's files; list or remove its snapshots.
    ///
    /// `kapsule snapshot NAME [SNAPSHOT]` takes one, running or not (instant and
    /// copy-on-write on btrfs). `kapsule restore NAME SNAPSHOT` goes back to it.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Snapshot {
        #[command(subcommand)]
        command: Option<SnapshotCommand>,
        /// The container.
        #[arg(required = true)]
        name: Option<String>,
        /// The snapshot's name (default: the date and time, e.g. 20261204-153012).
        snapshot: Option<String>,
    },
    /// Make a container as it was at one of its snapshots: its files, options and devices.
    ///
    /// A running container is stopped (its sessions end) and started again; you are asked
    /// first on a terminal.
    Restore {
        name: String,
        snapshot: String,
        /// Do not ask (needed without a terminal when the container runs).
        #[arg(long, short)]
        yes: bool,
    },
    /// Make a container anew from its image, as if just created with the same options.
    ///
    /// Its own files are replaced: installed packages, changes in /etc, /usr, /var, and the
    /// home too when it is not the host's (--no-mount-home), with the snapshots Kapsule took
    /// before upgrades. The packages and hooks it was created with are applied again. Your host home and custom mounts are untouched; its name, owner and
    /// options stay; users are set up again on their next enter. A container with snapshots
    /// you took is not reset (remove them, or keep one with `kapsule clone --snapshot`). You are
    /// asked first on a terminal.
    Reset {
        name: String,
        /// Reset from this local image instead of the one it was made from (needed when that
        /// one is gone).
        #[arg(long, short)]
        image: Option<String>,
        /// Do not ask (needed without a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Create a container as a copy of another, as it is now or at one of its snapshots.
    ///
    /// The copy is yours, with the same options, its own host name and machine ID; the source
    /// is only read and keeps running if it runs.
    Clone {
        /// The container to copy.
        source: String,
        /// Name of the new container.
        name: String,
        /// Copy the source as it was at this snapshot.
        #[arg(long)]
        snapshot: Option<String>,
        /// Make no "NAME (Kapsule)" terminal entry in your menu.
        #[arg(long)]
        no_menu_entry: bool,
    },
    /// Upgrade containers' packages, each with its own package manager.
    ///
    /// apt, dnf, pacman, zypper, apk or xbps, after the image's /.kapsule/upgrade when it has
    /// one; their output is shown as it comes. A stopped container is started for it and stopped
    /// again. On btrfs a snapshot is taken first, and `kapsule restore` goes back to it. With
    /// several containers, one that fails does not stop the others; the exit status says
    /// whether all were upgraded.
    Upgrade {
        /// The containers to upgrade.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Every container of yours.
        #[arg(long, short)]
        all: bool,
        /// Only those that are running (stopped ones are skipped).
        #[arg(long)]
        running: bool,
        /// Take no snapshot first.
        #[arg(long)]
        no_snapshot: bool,
    },
    /// Put a container's apps in your menu and its commands on your PATH (or take them back).
    ///
    /// Apps keep their icons (copied into your icon theme) and run in the container as you,
    /// with the files you open; commands get a wrapper that runs them there with their
    /// arguments and exit status. Everything is written in your own directories, named after
    /// the container, and removed with it by `kapsule rm`.
    Export {
        /// The container.
        name: String,
        /// Apps to export: desktop-file IDs (org.kde.kate), names (Kate) or programs (kate).
        #[arg(long, value_name = "APP", num_args = 1.., action = ArgAction::Append)]
        app: Vec<String>,
        /// Commands to export: paths in the container, or names on its PATH.
        #[arg(long, value_name = "PATH", num_args = 1.., action = ArgAction::Append)]
        bin: Vec<String>,
        /// The container's terminal entry, "NAME (Kapsule)".
        #[arg(long)]
        menu_entry: bool,
        /// Where command wrappers go (default: ~/.local/bin).
        #[arg(long, value_name = "DIR")]
        export_path: Option<std::path::PathBuf>,
        /// Show what is exported from the container.
        #[arg(long, conflicts_with_all = ["app", "bin", "menu_entry", "delete", "export_path"])]
        list: bool,
        /// Remove the given exports instead (or, with --all, every one of this container).
        #[arg(long)]
        delete: bool,
        /// With --delete: everything exported from the container.
        #[arg(long, requires = "delete", conflicts_with_all = ["app", "bin", "menu_entry"])]
        all: bool,
    },
    /// Create or remove the containers a manifest describes (distrobox.ini, or kapsule.ini).
    ///
    /// Each [section] is a container; its keys are distrobox's (image, clone, additional_packages,
    /// init_hooks, pre_init_hooks, home, volume, nvidia, start_now, replace, entry,
    /// exported_apps, exported_bins, exported_bins_path, include) and Kapsule's create options
    /// (gpu, custom_mounts, session_mode, ...). A key Kapsule has no meaning for is an error
    /// naming its line, and nothing is done. A container that exists is left as it is, unless
    /// replace=true or --replace: running it again changes nothing.
    Assemble {
        /// create: make what the manifest describes; rm: remove it, with what was exported.
        action: AssembleAction,
        /// The manifest (default: ./kapsule.ini, else ./distrobox.ini).
        #[arg(long, short)]
        file: Option<std::path::PathBuf>,
        /// Only this container of the manifest.
        #[arg(long, short)]
        name: Option<String>,
        /// Make containers that exist anew (removing them first, with their exports).
        #[arg(long, short = 'R')]
        replace: bool,
        /// Only say what would be done.
        #[arg(long, short)]
        dry_run: bool,
    },
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Show the configuration (default_container, default_image), or one key of it.
    Config { key: Option<String> },
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// List a container's snapshots, oldest first.
    #[command(visible_alias = "ls")]
    List {
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove a snapshot.
    #[command(visible_alias = "delete")]
    Rm { name: String, snapshot: String },
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List local images.
    #[command(visible_alias = "ls")]
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Import an image: a directory, or its two files.
    ///
    /// A directory holds a metadata tarball (incus.tar.xz, metadata.tar.xz or metadata.tar.gz)
    /// and a root file system (rootfs.squashfs, rootfs.tar.xz, rootfs.tar.gz or rootfs.tar.zst);
    /// or give the two files themselves, metadata first. Create containers from it with
    /// `kapsule create --image local:ALIAS`.
    Import {
        /// The image directory, or the metadata tarball and the root file system (read with
        /// your own permissions).
        #[arg(required = true, num_args = 1..=2, value_name = "DIR|METADATA ROOTFS")]
        paths: Vec<std::path::PathBuf>,
        /// The alias to give the image (default: the directory's name); an image that had this
        /// alias is replaced once the new one is in.
        #[arg(short, long)]
        alias: Option<String>,
    },
    /// Refresh images pulled from remotes (get each one's newest build).
    Refresh {
        /// Only this image: <remote>:<alias> or <alias> (default: every pulled image).
        image: Option<String>,
    },
    /// Delete a local image, by alias or fingerprint.
    #[command(visible_alias = "rm")]
    Delete { image: String },
}

/// What `kapsule assemble` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AssembleAction {
    Create,
    Rm,
}

/// How data is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// The create options as flags, one definition for all: `--<key>`/`--no-<key>` for booleans,
/// a repeatable `--<key> PATH` for path lists. Only flags the user gave are sent, so the
/// daemon applies image defaults to the rest.
#[derive(Debug, Default)]
pub struct CreateFlags {
    pub values: HashMap<String, OwnedVariant>,
}

fn flag(key: &str) -> String {
    key.replace('_', "-")
}

fn leak(s: String) -> &'static str {
    // clap wants 'static names; these few strings live as long as the process anyway.
    Box::leak(s.into_boxed_str())
}

impl Args for CreateFlags {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for option in OPTIONS {
            let name = flag(option.key);
            match option.kind {
                OptionKind::Boolean => {
                    let default = |on: bool| if on == option.default { " [default]" } else { "" };
                    let negative = leak(format!("no-{name}"));
                    let positive = leak(name);
                    cmd = cmd
                        .arg(
                            clap::Arg::new(positive)
                                .long(positive)
                                .action(ArgAction::SetTrue)
                                .overrides_with(negative)
                                .help(format!("{}{}", option.description, default(true))),
                        )
                        .arg(
                            clap::Arg::new(negative)
                                .long(negative)
                                .action(ArgAction::SetTrue)
                                .overrides_with(positive)
                                .help(format!("Disable: {}{}", option.title, default(false))),
                        );
                }
                OptionKind::PathList => {
                    let long = leak(name);
                    cmd = cmd.arg(
                        clap::Arg::new(long)
                            .long(long)
                            .value_name("DIR")
                            .action(ArgAction::Append)
                            .help(format!("{} (repeatable; ~/ is your home)", option.description)),
                    );
                }
                OptionKind::Path => {
                    let long = leak(name);
                    cmd = cmd.arg(
                        clap::Arg::new(long)
                            .long(long)
                            .value_name("DIR")
                            .action(ArgAction::Set)
                            .help(format!("{} (made if missing; ~/ is your home)", option.description)),
                    );
                }
                OptionKind::Packages => {
                    let long = leak(name);
                    cmd = cmd.arg(
                        clap::Arg::new(long)
                            .long(long)
                            .value_name("PACKAGES")
                            .action(ArgAction::Append)
                            .help(format!(
                                "{} (repeatable; several separated by spaces)",
                                option.description
                            )),
                    );
                }
                OptionKind::Commands => {
                    let long = leak(name);
                    cmd = cmd.arg(
                        clap::Arg::new(long)
                            .long(long)
                            .value_name("COMMAND")
                            .action(ArgAction::Append)
                            .help(format!("{} (repeatable, run in the order given)", option.description)),
                    );
                }
            }
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for CreateFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut values = HashMap::new();
        for option in OPTIONS {
            let name = flag(option.key);
            let value = match option.kind {
                // The last of --x / --no-x wins (overrides_with leaves only that one set).
                OptionKind::Boolean => {
                    if matches.get_flag(&name) {
                        Some(Variant::Bool(true))
                    } else if matches.get_flag(&format!("no-{name}")) {
                        Some(Variant::Bool(false))
                    } else {
                        None
                    }
                }
                OptionKind::PathList | OptionKind::Commands => matches
                    .get_many::<String>(&name)
                    .map(|items| Variant::from(items.cloned().collect::<Vec<String>>())),
                // distrobox's habit: `--additional-packages "git vim"`.
                OptionKind::Packages => matches.get_many::<String>(&name).map(|lists| {
                    Variant::from(
                        lists
                            .flat_map(|list| list.split_whitespace().map(str::to_owned))
                            .collect::<Vec<String>>(),
                    )
                }),
                // The daemon has no working directory of ours: a relative path is made absolute here.
                OptionKind::Path => match matches.get_one::<String>(&name) {
                    Some(path) if !path.is_empty() && !path.starts_with(['/', '~']) => {
                        let absolute = std::path::absolute(path)
                            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?;
                        Some(Variant::from(absolute.to_string_lossy().into_owned()))
                    }
                    Some(path) => Some(Variant::from(path.clone())),
                    None => None,
                },
            };
            if let Some(value) = value {
                let owned = OwnedVariant::try_from(value)
                    .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?;
                values.insert(option.key.to_owned(), owned);
            }
        }
        Ok(CreateFlags { values })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The clap command, for completions and man pages.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Every man page: `kapsule.1` and one per subcommand (`kapsule-image-import.1`, ...), as
/// (file name, roff text).
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    fn walk(cmd: clap::Command, prefix: &str, pages: &mut Vec<(String, Vec<u8>)>) {
        let name = if prefix.is_empty() {
            cmd.get_name().to_owned()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        // The page of a subcommand is named and titled with its full path.
        let cmd = cmd.name(leak(name.clone())).bin_name(name.replace('-', " "));
        let mut roff = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut roff)
            .expect("rendering into memory cannot fail");
        pages.push((format!("{name}.1"), roff));
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            walk(sub.clone(), &name, pages);
        }
    }
    let mut pages = Vec::new();
    let mut cmd = command();
    cmd.build();
    walk(cmd, "", &mut pages);
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(args: &[&str]) -> HashMap<String, OwnedVariant> {
        let mut argv = vec!["kapsule", "create", "box"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Create { options, .. } => options.values,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_schema_option_has_flags() {
        let help = command()
            .find_subcommand_mut("create")
            .unwrap()
            .render_long_help()
            .to_string();
        for flag in [
            "--session-mode",
            "--no-session-mode",
            "--dbus-mux",
            "--host-rootfs",
            "--no-host-rootfs",
            "--no-mount-home",
            "--custom-mounts <DIR>",
            "--no-gpu",
            "--nvidia-drivers",
            "--home <DIR>",
            "--additional-packages <PACKAGES>",
            "--init-hooks <COMMAND>",
            "--pre-init-hooks <COMMAND>",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
    }

    #[test]
    fn only_given_flags_are_sent_and_the_last_wins() {
        assert!(create(&[]).is_empty());
        let v = create(&["--no-gpu", "--custom-mounts", "~/a", "--custom-mounts", "/b", "--gpu"]);
        assert!(bool::try_from(&v["gpu"]).unwrap());
        let mounts: Vec<String> = v["custom_mounts"].try_clone().unwrap().try_into().unwrap();
        assert_eq!(mounts, ["~/a", "/b"]);
        let v = create(&["--no-mount-home"]);
        assert!(!bool::try_from(&v["mount_home"]).unwrap());
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn packages_split_like_distrobox_hooks_stay_whole_and_a_relative_home_is_made_absolute() {
        let strings = |v: &OwnedVariant| -> Vec<String> { v.try_clone().unwrap().try_into().unwrap() };
        let v = create(&[
            "--additional-packages",
            "git  vim",
            "--additional-packages",
            "htop",
            "--init-hooks",
            "echo a b",
            "--pre-init-hooks",
            "true",
            "--init-hooks",
            "touch /x",
            "--home",
            "boxes/dev",
        ]);
        assert_eq!(strings(&v["additional_packages"]), ["git", "vim", "htop"]);
        assert_eq!(strings(&v["init_hooks"]), ["echo a b", "touch /x"]);
        assert_eq!(strings(&v["pre_init_hooks"]), ["true"]);
        let home: String = v["home"].try_clone().unwrap().try_into().unwrap();
        assert_eq!(
            std::path::Path::new(&home),
            std::env::current_dir().unwrap().join("boxes/dev")
        );
        let home: String = create(&["--home", "~/h"])["home"]
            .try_clone()
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(home, "~/h");
    }

    #[test]
    fn man_pages_cover_every_visible_command() {
        let pages = man_pages();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for name in [
            "kapsule.1",
            "kapsule-create.1",
            "kapsule-enter.1",
            "kapsule-list.1",
            "kapsule-rm.1",
            "kapsule-image.1",
            "kapsule-image-import.1",
            "kapsule-image-refresh.1",
            "kapsule-export.1",
            "kapsule-config.1",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("completions") || n.contains("help")),
            "{names:?}"
        );
        let create = String::from_utf8(pages.iter().find(|(n, _)| n == "kapsule-create.1").unwrap().1.clone()).unwrap();
        assert!(create.contains(".TH kapsule-create 1"), "{create}");
        assert!(
            create.contains("no\\-mount\\-home"),
            "the schema flags are documented: {create}"
        );
    }

    #[test]
    fn enter_takes_everything_after_the_separator_verbatim() {
        let parse = |argv: &[&str]| match Cli::try_parse_from(argv).unwrap().command {
            Command::Enter { name, cwd, command, .. } => (name, cwd, command),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            parse(&["kapsule", "enter", "box", "--", "printf", "%s|", "a b", "--cwd"]),
            (
                Some("box".into()),
                None,
                vec!["printf".into(), "%s|".into(), "a b".into(), "--cwd".into()]
            )
        );
        // The original CLI took `--cwd` for the name here.
        let (name, cwd, command) = parse(&["kapsule", "enter", "--cwd", "/x", "--", "pwd"]);
        assert_eq!((name, cwd, command), (None, Some("/x".into()), vec!["pwd".into()]));
        assert_eq!(parse(&["kap", "enter"]), (None, None, vec![]));
    }

    #[test]
    fn aliases_parse() {
        assert!(matches!(
            Cli::try_parse_from(["kap", "ls"]).unwrap().command,
            Command::List { .. }
        ));
        assert!(matches!(
            Cli::try_parse_from(["kap", "remove", "x"]).unwrap().command,
            Command::Rm { .. }
        ));
        assert!(matches!(
            Cli::try_parse_from(["kap", "rm", "a", "b", "-f"]).unwrap().command,
            Command::Rm { names, force: true, all: false, .. } if names == ["a", "b"]
        ));
        assert!(matches!(
            Cli::try_parse_from(["kap", "ephemeral", "--no-gpu", "--", "sh", "-c", "exit 3"]).unwrap().command,
            Command::Run { command, name: None, .. } if command == ["sh", "-c", "exit 3"]
        ));
        assert!(matches!(
            Cli::try_parse_from(["kap", "stop", "--all", "--yes"]).unwrap().command,
            Command::Stop {
                all: true,
                yes: true,
                ..
            }
        ));
        for wrong in [&["kap", "rm"][..], &["kap", "rm", "a", "--all"], &["kap", "stop"]] {
            assert!(Cli::try_parse_from(wrong).is_err(), "{wrong:?}");
        }
        assert!(Cli::try_parse_from(["kapsule", "list", "--format", "yaml"]).is_err());
    }
}
