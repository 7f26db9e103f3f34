//! `mapcast user add|list|delete|passwd|unlock` and `mapcast device
//! add|list|delete|rotate-secret`: provision the first admin, script fleets,
//! reset passwords and lift lockouts without going through the REST API.
//! Each opens the configured database (named on stderr; a missing one is
//! created only with `--create`), acts and exits. Results go to stdout: one
//! JSON line per record, or a table when stdout is a terminal (lists).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{DbArgs, stdout_is_terminal, with_database, write_table};
use crate::domain::Principal;
use crate::domain::Role;
use crate::domain::time::format_rfc3339;
use crate::domain::{DeviceKind, DeviceName, Password, Username};
use crate::identities::{Identities, IdentityError, User};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from stdin (never from the
    /// command line). Prints `{"id","username","role"}`.
    Add(UserAddArgs),
    /// Every user, oldest first: a table on a terminal, else one
    /// `{"id","username","role","created_at"}` per line.
    List(DbArgs),
    /// Delete a user with its devices and tokens. The last admin stays.
    /// Prints `{"id","username","deleted":true}`.
    Delete(UserNameArgs),
    /// Set a user's password, read from stdin. Prints
    /// `{"id","username","password_changed":true}`.
    Passwd(UserPasswdArgs),
    /// Lift the sign-in lockouts of a user name (or device id) on every
    /// running server, from every address; applied within a second. Prints
    /// `{"username","requested":true}`.
    Unlock(UserNameArgs),
}

#[derive(Debug, Args)]
pub struct UserNameArgs {
    /// The user name (for `unlock`, a device id also works).
    #[arg(value_name = "NAME")]
    pub username: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct UserPasswdArgs {
    /// The user name.
    #[arg(value_name = "NAME")]
    pub username: String,
    /// Read the password from stdin (always the case; the flag makes scripts
    /// say so).
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub db: DbArgs,
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
    pub db: DbArgs,
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
    /// Devices, oldest first: a table on a terminal, else one
    /// `{"id","name","kind","visibility","owner","created_at"}` per line.
    List(DeviceListArgs),
    /// Delete a device; its MQTT credentials stop working and running servers
    /// close its connections within a second. Prints
    /// `{"id","deleted":true}`.
    Delete(DeviceIdArgs),
    /// Give a device a new secret (its MQTT password); the old one stops
    /// working. Prints `{"id","secret"}`; the secret is shown only this once.
    RotateSecret(DeviceIdArgs),
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
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct DeviceListArgs {
    /// Only the devices of this user.
    #[arg(long, value_name = "USERNAME")]
    pub owner: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct DeviceIdArgs {
    /// The device id (its MQTT user name).
    #[arg(value_name = "ID")]
    pub id: String,
    #[command(flatten)]
    pub db: DbArgs,
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
    output: impl Write,
) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add(args) => add_user(args, input, output),
        UserCommand::List(db) => list_users(&db, output),
        UserCommand::Delete(args) => delete_user(args, output),
        UserCommand::Passwd(args) => passwd(args, input, output),
        UserCommand::Unlock(args) => unlock(args, output),
    }
}

fn add_user(args: UserAddArgs, input: impl BufRead, mut output: impl Write) -> anyhow::Result<()> {
    let role = if args.admin || args.role == RoleArg::Admin { Role::Admin } else { Role::User };
    let username = Username::parse(args.username).context("invalid --username")?;
    let password =
        Password::parse(read_password(input, "mapcast user add ... --password-stdin < file")?)
            .context("invalid password")?;

    let user = with_identities(&args.db, |ids| async move {
        ids.register_user(username.clone(), password, role).await.map_err(|e| match e {
            IdentityError::UsernameTaken => anyhow!("user {username} already exists"),
            e => anyhow::Error::from(e).context("cannot create the user"),
        })
    })?;

    let line = json!({ "id": user.id, "username": user.username, "role": user.role });
    writeln!(output, "{line}")?;
    Ok(())
}

fn list_users(db: &DbArgs, mut output: impl Write) -> anyhow::Result<()> {
    let users = with_identities(db, |ids| async move { Ok(ids.users().await?) })?;
    if stdout_is_terminal() {
        let rows: Vec<Vec<String>> = users
            .iter()
            .map(|u| {
                vec![
                    u.username.clone(),
                    u.role.to_string(),
                    u.id.clone(),
                    format_rfc3339(u.created_at),
                ]
            })
            .collect();
        write_table(output, &["USERNAME", "ROLE", "ID", "CREATED"], &rows)?;
    } else {
        for u in users {
            let line = json!({
                "id": u.id,
                "username": u.username,
                "role": u.role,
                "created_at": format_rfc3339(u.created_at),
            });
            writeln!(output, "{line}")?;
        }
    }
    Ok(())
}

/// The user named `username`, or an error that says there is none.
async fn named_user(ids: &Identities, username: &str) -> anyhow::Result<User> {
    ids.user_by_name(username).await?.ok_or_else(|| anyhow!("no user named {username:?}"))
}

fn delete_user(args: UserNameArgs, mut output: impl Write) -> anyhow::Result<()> {
    let username = args.username;
    let user = with_identities(&args.db, |ids| {
        let username = username.clone();
        async move {
            let user = named_user(&ids, &username).await?;
            let last_admin =
                || anyhow!("{username} is the last admin and stays: make another user admin first");
            if user.role == Role::Admin
                && ids.users().await?.iter().filter(|u| u.role == Role::Admin).count() < 2
            {
                return Err(last_admin());
            }
            let devices = ids.device_ids_of(&user.id).await?;
            // The store re-checks in its transaction (two deletes at once).
            if !ids.delete_user(&user.id).await? {
                return Err(last_admin());
            }
            let gone: Vec<String> = std::iter::once(Principal::user(&user.id))
                .chain(devices.iter().map(|d| Principal::device(d)))
                .map(|p| p.as_str().to_owned())
                .collect();
            ids.request_revocations(&gone).await?;
            Ok(user)
        }
    })?;
    writeln!(output, "{}", json!({ "id": user.id, "username": user.username, "deleted": true }))?;
    Ok(())
}

fn passwd(args: UserPasswdArgs, input: impl BufRead, mut output: impl Write) -> anyhow::Result<()> {
    let username = args.username;
    let password =
        Password::parse(read_password(input, "mapcast user passwd NAME --password-stdin < file")?)
            .context("invalid password")?;
    let user = with_identities(&args.db, |ids| {
        let username = username.clone();
        async move {
            let user = named_user(&ids, &username).await?;
            if !ids.set_password(&user.id, password).await? {
                bail!("no user named {username:?}");
            }
            Ok(user)
        }
    })?;
    let line = json!({ "id": user.id, "username": user.username, "password_changed": true });
    writeln!(output, "{line}")?;
    Ok(())
}

/// `mapcast user unlock NAME`: a request every running server applies.
fn unlock(args: UserNameArgs, mut output: impl Write) -> anyhow::Result<()> {
    let username = args.username;
    if username.is_empty() || username.chars().count() > 64 {
        bail!("the user name must be 1 to 64 characters");
    }
    with_identities(&args.db, |ids| {
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
pub fn device_command(cmd: DeviceCommand, output: impl Write) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Add(args) => add_device(args, output),
        DeviceCommand::List(args) => list_devices(args, output),
        DeviceCommand::Delete(args) => delete_device(args, output),
        DeviceCommand::RotateSecret(args) => rotate_secret(args, output),
    }
}

fn add_device(args: DeviceAddArgs, mut output: impl Write) -> anyhow::Result<()> {
    let name = DeviceName::parse(args.name).context("invalid --name")?;
    let kind = match args.kind {
        KindArg::Car => DeviceKind::Car,
        KindArg::Phone => DeviceKind::Phone,
    };
    let owner = args.owner;

    let new = with_identities(&args.db, |ids| async move {
        ids.create_device_for(&owner, name, kind).await.map_err(|e| match e {
            IdentityError::UnknownUser(u) => anyhow!("no user named {u:?}"),
            e => anyhow::Error::from(e).context("cannot create the device"),
        })
    })?;

    let d = &new.device;
    let line = json!({ "id": d.id, "secret": new.secret.expose(), "name": d.name, "kind": d.kind });
    writeln!(output, "{line}")?;
    Ok(())
}

fn list_devices(args: DeviceListArgs, mut output: impl Write) -> anyhow::Result<()> {
    let owner = args.owner;
    let (devices, users) = with_identities(&args.db, |ids| async move {
        let owner_id = match &owner {
            Some(name) => Some(named_user(&ids, name).await?.id),
            None => None,
        };
        Ok((ids.devices(owner_id.as_deref()).await?, ids.users().await?))
    })?;
    let owner_name = |id: &str| {
        users.iter().find(|u| u.id == id).map_or_else(String::new, |u| u.username.clone())
    };
    if stdout_is_terminal() {
        let rows: Vec<Vec<String>> = devices
            .iter()
            .map(|d| {
                vec![
                    d.id.clone(),
                    d.name.clone(),
                    d.kind.to_string(),
                    d.visibility.as_str().to_owned(),
                    owner_name(&d.owner_id),
                    format_rfc3339(d.created_at),
                ]
            })
            .collect();
        write_table(output, &["ID", "NAME", "KIND", "VISIBILITY", "OWNER", "CREATED"], &rows)?;
    } else {
        for d in devices {
            let line = json!({
                "id": d.id,
                "name": d.name,
                "kind": d.kind,
                "visibility": d.visibility.as_str(),
                "owner_id": d.owner_id,
                "owner": owner_name(&d.owner_id),
                "created_at": format_rfc3339(d.created_at),
            });
            writeln!(output, "{line}")?;
        }
    }
    Ok(())
}

fn delete_device(args: DeviceIdArgs, mut output: impl Write) -> anyhow::Result<()> {
    let id = args.id;
    with_identities(&args.db, |ids| {
        let id = id.clone();
        async move {
            if !ids.delete_device(&id).await? {
                bail!("no device with id {id:?}");
            }
            ids.request_revocations(&[Principal::device(&id).as_str().to_owned()]).await?;
            Ok(())
        }
    })?;
    writeln!(output, "{}", json!({ "id": id, "deleted": true }))?;
    Ok(())
}

fn rotate_secret(args: DeviceIdArgs, mut output: impl Write) -> anyhow::Result<()> {
    let id = args.id;
    let secret = with_identities(&args.db, |ids| {
        let id = id.clone();
        async move {
            let secret = ids
                .rotate_device_secret(&id)
                .await?
                .ok_or_else(|| anyhow!("no device with id {id:?}"))?;
            // Connections made with the old secret must not outlive it.
            ids.request_revocations(&[Principal::device(&id).as_str().to_owned()]).await?;
            Ok(secret)
        }
    })?;
    writeln!(output, "{}", json!({ "id": id, "secret": secret.expose() }))?;
    Ok(())
}

/// Open the database of `db`, run `act` on the identity service, close it.
fn with_identities<T, F, Fut>(db: &DbArgs, act: F) -> anyhow::Result<T>
where
    F: FnOnce(Identities) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    with_database(db, |store, settings| act(Identities::new(store, settings.identity_settings())))
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
        assert_eq!(args.db.location.data_dir.as_deref(), Some(std::path::Path::new("/d")));

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

        let Command::User(cmd) = parse(&[
            "mapcast",
            "user",
            "add",
            "--username",
            "ann",
            "--create",
            "--data-dir",
            data_dir,
        ]) else {
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
