//! A throwaway PostgreSQL cluster from Debian's package: initdb in a temp
//! dir, a server on a loopback port, stopped (and its files removed) when
//! dropped. Password authentication over TCP, as a fleet store would have;
//! TLS when asked. As root the server runs as the `postgres` user, since
//! PostgreSQL refuses to run as root.

use std::{
    net::TcpListener,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The database role the agents use, and its password.
pub const USER: &str = "secretmon";
pub const PASSWORD: &str = "fleet-test-password-not-a-secret";
pub const DATABASE: &str = "fleet";

pub struct Postgres {
    dir: Dir,
    bin: PathBuf,
    /// uid and gid to run as, when we are root.
    run_as: Option<(u32, u32)>,
    pub port: u16,
}

/// Where the cluster lives: removed with it, or kept for the next run.
enum Dir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Dir {
    fn path(&self) -> &Path {
        match self {
            Self::Temp(dir) => dir.path(),
            Self::Kept(path) => path,
        }
    }
}

/// TLS files for the server.
pub struct ServerTls<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// Debian's newest installed PostgreSQL.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under /usr/lib/postgresql: `cargo xtask setup` installs Debian's postgresql package"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(None, false)
    }

    /// A cluster that also accepts TLS with this certificate; `durable`:
    /// with fsync, as a real store (tests go faster without).
    pub fn start_with(tls: Option<ServerTls<'_>>, durable: bool) -> Self {
        Self::start_in(Dir::Temp(tempfile::tempdir().unwrap()), tls, durable)
    }

    /// The same, in `dir`, kept when dropped (the server stopped): the
    /// cluster found there is started again, with its data. Also says
    /// whether it was there.
    pub fn keep_in(dir: &Path, tls: Option<ServerTls<'_>>, durable: bool) -> (Self, bool) {
        std::fs::create_dir_all(dir).unwrap();
        let existed = dir.join("data").join("PG_VERSION").exists();
        let pg = Self::start_in(Dir::Kept(dir.to_path_buf()), tls, durable);
        (pg, existed)
    }

    fn start_in(dir: Dir, tls: Option<ServerTls<'_>>, durable: bool) -> Self {
        let run_as = nix::unistd::geteuid().is_root().then(|| {
            let user = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("Debian's postgresql package makes a `postgres` user");
            (user.uid.as_raw(), user.gid.as_raw())
        });
        let pg = Self {
            bin: bin_dir(),
            run_as,
            port: free_port(),
            dir,
        };
        let fresh = !pg.data().join("PG_VERSION").exists();
        let pwfile = pg.file("pwfile", PASSWORD, 0o600);
        pg.own(pg.dir.path());
        if fresh {
            pg.run(
                Command::new(pg.bin.join("initdb"))
                    .arg("-D")
                    .arg(pg.data())
                    .args([
                        "-U",
                        USER,
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                    ])
                    .arg(format!("--pwfile={}", pwfile.display())),
            );
        }
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = {}\n",
            pg.port,
            pg.dir.path().display(),
            if durable { "on" } else { "off" }
        );
        if let Some(tls) = tls {
            let cert = pg.file("server.crt", tls.cert_pem, 0o600);
            let key = pg.file("server.key", tls.key_pem, 0o600);
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                cert.display(),
                key.display()
            ));
        }
        let conf_path = pg.data().join("postgresql.auto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        pg.own(&conf_path);
        pg.start_server();
        if fresh {
            pg.run(
                Command::new(pg.bin.join("createdb"))
                    .arg("-h")
                    .arg(pg.dir.path())
                    .args(["-p", &pg.port.to_string(), "-U", USER, DATABASE]),
            );
        }
        pg
    }

    /// A kept cluster shuts down cleanly, a throwaway one at once.
    fn stop_mode(&self) -> &'static str {
        match self.dir {
            Dir::Temp(_) => "immediate",
            Dir::Kept(_) => "fast",
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A file the server can read (and nobody else).
    fn file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        self.own(&path);
        path
    }

    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    /// Run a PostgreSQL program as the server's user, from the cluster's
    /// dir (the server's user may not enter ours).
    fn as_server(&self, cmd: &mut Command) {
        cmd.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
    }

    fn run(&self, cmd: &mut Command) {
        self.as_server(cmd);
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self.dir.path().join("server.log");
        self.run(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(&log)
                .args(args),
        );
    }

    fn start_server(&self) {
        self.pg_ctl(&["-w", "start"]);
    }

    /// Stop the server (fast: connections are cut), keeping its data.
    pub fn stop(&self) {
        self.pg_ctl(&["-w", "-m", "fast", "stop"]);
    }

    pub fn restart(&self) {
        self.start_server();
    }

    /// The fleet URL over TCP, without the password (it goes in a file).
    pub fn url(&self, host: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "?" };
        format!(
            "postgres://{USER}@{host}:{}/{DATABASE}{sep}{query}",
            self.port
        )
    }

    /// A password file for the agents, 0600.
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("fleet.password");
        std::fs::write(&path, format!("{PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// `psql -At -c SQL` over the local socket: one line per row.
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    /// The same, or psql's error (a table not made yet).
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", DATABASE])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql]);
        self.as_server(&mut cmd);
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let log = self.dir.path().join("server.log");
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.data()).arg("-l").arg(&log).args([
            "-w",
            "-m",
            self.stop_mode(),
            "stop",
        ]);
        self.as_server(&mut cmd);
        // Already stopped is fine.
        let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}
