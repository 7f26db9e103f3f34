//! `mapcast user add|unlock` and `mapcast device add`: provision the first
//! admin, script fleets and lift lockouts without going through the REST API. Each opens the
//! configured database, applies pending migrations, acts and exits; the
//! result is one JSON line on stdout.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::ConfigArgs;
use crate::broker::auth::Role;
use crate::config::Settings;
use crate::domain::{DeviceKind, DeviceName, Password, Username};
use crate::identities::{Identities, IdentityError};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from stdin (never from the
    /// command line). Prints `{"id","username","role"}`.
    Add(UserAddArgs),
    /// Lift the sign-in lockouts of a user name (or device id) on every
    /// running server, from every address; applied within a second. Prints
    /// `{"username","requested":true}`.
    Unlock(UserUnlockArgs),
}

#[derive(Debug, Args)]
pub struct UserUnlockArgs {
    /// The user name (or device id) to unlock.
    #[arg(value_name = "NAME")]
    pub username: String,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    /// The user name: 3 to 64 letters, digits, `_`, `.` or `-`.
    #[arg(long, value_name = "NAME")]
    pub username: String,
    /// The role: `admin` may do everything, `user` its own devices and the map.
    #[arg(long, value_enum, default_value_t = RoleArg::User)]
    pub role: RoleArg,
    /// Shorthand for `--role admin`.
    #[arg(long, conflicts_with = "role")]
    pub admin: bool,
    /// Read the password from stdin (always the case; the flag makes scripts
    /// say so).
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    User,
    Admin,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Create a device owned by a user. Prints `{"id","secret","name","kind"}`:
    /// the MQTT user name and password of the device. The secret is shown
    /// only this once.
    Add(DeviceAddArgs),
}

#[derive(Debug, Args)]
pub struct DeviceAddArgs {
    /// The user name of the owner.
    #[arg(long, value_name = "USERNAME")]
    pub owner: String,
    /// A display name, 1 to 100 characters.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// What the device is.
    #[arg(long, value_enum, default_value_t = KindArg::Car)]
    pub kind: KindArg,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Car,
    Phone,
}

/// `mapcast user ...`.
pub fn user_command(
    cmd: UserCommand,
    input: impl BufRead,
    mut output: impl Write,
) -> anyhow::Result<()> {
    let args = match cmd {
        UserCommand::Add(args) => args,
        UserCommand::Unlock(args) => return unlock_command(args, output),
    };
    let role = if args.admin || args.role == RoleArg::Admin { Role::Admin } else { Role::User };
    let username = Username::parse(args.username).context("invalid --username")?;
    let settings = args.config.load_settings()?;
    let password =
        Password::parse(read_password(input, "mapcast user add ... --password-stdin < file")?)
            .context("invalid password")?;

    let user = with_identities(&settings, |ids| async move {
        ids.register_user(username.clone(), password, role).await.map_err(|e| match e {
            IdentityError::UsernameTaken => anyhow::anyhow!("user {username} already exists"),
            e => anyhow::Error::from(e).context("cannot create the user"),
        })
    })?;

    let line = json!({ "id": user.id, "username": user.username, "role": user.role });
    writeln!(output, "{line}")?;
    Ok(())
}

/// `mapcast user unlock NAME`: a request every running server applies.
fn unlock_command(args: UserUnlockArgs, mut output: impl Write) -> anyhow::Result<()> {
    let username = args.username;
    if username.is_empty() || username.chars().count() > 64 {
        bail!("the user name must be 1 to 64 characters");
    }
    let settings = args.config.load_settings()?;
    with_identities(&settings, |ids| {
        let username = username.clone();
        async move {
            ids.request_unlock(&username)
                .await
                .map_err(|e| anyhow::Error::from(e).context("cannot request the unlock"))
        }
    })?;
    writeln!(output, "{}", json!({ "username": username, "requested": true }))?;
    Ok(())
}

/// `mapcast device ...`.
pub fn device_command(cmd: DeviceCommand, mut output: impl Write) -> anyhow::Result<()> {
    let DeviceCommand::Add(args) = cmd;
    let name = DeviceName::parse(args.name).context("invalid --name")?;
    let kind = match args.kind {
        KindArg::Car => DeviceKind::Car,
        KindArg::Phone => DeviceKind::Phone,
    };
    let owner = args.owner;
    let settings = args.config.load_settings()?;

    let new = with_identities(&settings, |ids| async move {
        ids.create_device_for(&owner, name, kind).await.map_err(|e| match e {
            IdentityError::UnknownUser(u) => anyhow::anyhow!("no user named {u:?}"),
            e => anyhow::Error::from(e).context("cannot create the device"),
        })
    })?;

    let d = &new.device;
    let line = json!({ "id": d.id, "secret": new.secret.expose(), "name": d.name, "kind": d.kind });
    writeln!(output, "{line}")?;
    Ok(())
}

/// Open and migrate the configured database, run `act`, close it.
fn with_identities<T, F, Fut>(settings: &Settings, act: F) -> anyhow::Result<T>
where
    F: FnOnce(Identities) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let store = Store::connect(settings.database_url().expose(), 1).await?;
        store.migrate().await?;
        let ids = Identities::new(store.clone(), settings.identity_settings());
        let result = act(ids).await;
        store.close().await;
        result
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The first line of `input` (without its line ending); `usage` shows how
/// to pass it when it is empty.
pub(super) fn read_password(mut input: impl BufRead, usage: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        eprint!("Password (visible as you type): ");
    }
    let mut line = String::new();
    input.read_line(&mut line).context("cannot read the password from stdin")?;
    let password =
        line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    if password.is_empty() {
        bail!("empty password: write it to stdin, e.g. `{usage}`");
    }
    Ok(password.to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn user_add_takes_the_role_and_the_config_options() {
        let cli = Cli::try_parse_from([
            "mapcast",
            "user",
            "add",
            "--username",
            "root",
            "--admin",
            "--password-stdin",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        let Command::User(UserCommand::Add(args)) = cli.command else { panic!("not user add") };
        assert!(args.admin && args.password_stdin);
        assert_eq!(args.config.data_dir.as_deref(), Some(std::path::Path::new("/d")));

        let cli =
            Cli::try_parse_from(["mapcast", "user", "add", "--username", "a", "--role", "admin"])
                .unwrap();
        let Command::User(UserCommand::Add(args)) = cli.command else { panic!("not user add") };
        assert_eq!(args.role, RoleArg::Admin);
    }

    #[test]
    fn device_add_defaults_to_a_car() {
        let cli =
            Cli::try_parse_from(["mapcast", "device", "add", "--owner", "ann", "--name", "Golf"])
                .unwrap();
        let Command::Device(DeviceCommand::Add(args)) = cli.command else {
            panic!("not device add")
        };
        assert_eq!(args.kind, KindArg::Car);
    }

    #[test]
    fn users_and_devices_are_created_in_the_configured_database() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().command;

        let Command::User(cmd) =
            parse(&["mapcast", "user", "add", "--username", "ann", "--data-dir", data_dir])
        else {
            panic!()
        };
        let mut out = Vec::new();
        user_command(cmd, &b"correct horse\n"[..], &mut out).unwrap();
        let user: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(user["username"], "ann");
        assert_eq!(user["role"], "user");

        let Command::Device(cmd) = parse(&[
            "mapcast",
            "device",
            "add",
            "--owner",
            "ann",
            "--name",
            "Golf",
            "--kind",
            "car",
            "--data-dir",
            data_dir,
        ]) else {
            panic!()
        };
        let mut out = Vec::new();
        device_command(cmd, &mut out).unwrap();
        let device: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(device["kind"], "car");
        assert_eq!(device["secret"].as_str().unwrap().len(), 43);

        let Command::User(cmd) =
            parse(&["mapcast", "user", "add", "--username", "ann", "--data-dir", data_dir])
        else {
            panic!()
        };
        let err = user_command(cmd, &b"other horse\n"[..], Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");

        let Command::Device(cmd) = parse(&[
            "mapcast",
            "device",
            "add",
            "--owner",
            "bob",
            "--name",
            "x",
            "--data-dir",
            data_dir,
        ]) else {
            panic!()
        };
        assert!(device_command(cmd, Vec::new()).is_err());
    }
}
