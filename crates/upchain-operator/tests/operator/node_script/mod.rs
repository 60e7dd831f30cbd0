//! The node step on real machines (docs/node-script.md). The node Job's command, as
//! upchain-core renders it, runs here against a real OpenSSH server per node whose root
//! login enters a Debian root file system, where the real apt and dpkg (or dnf and rpm)
//! install fake kubeadm, kubelet and kubectl packages from local signed repositories laid
//! out like pkgs.k8s.io. `scripts/node-sandbox` builds the roots and repositories once.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use upchain_api::{HostKeyPolicy, NodeRole, RunnerSpec, UpgradeKind};
use upchain_core::job::{JobMode, NodeJob, Owner};
use upchain_core::version::KubeVersion;

mod cases;
mod etcd;
mod second_pass;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const OLD: &str = "1.34.3";
const NEW: &str = "1.35.2";

/// The sandbox's directory, built (or found current) once per test process.
fn sandbox() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(format!("{REPO}/scripts/node-sandbox"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/node-sandbox runs");
        assert!(
            out.status.success(),
            "scripts/node-sandbox failed: the node tests need root, openssh-server, \
             mmdebstrap, dpkg-dev, rpm, createrepo-c and dnf (the script installs them)"
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Debian,
    Rhel,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    FirstControlPlane,
    ControlPlane,
    Worker,
}

/// One node: a root file system and the sshd whose root login enters it: the host's sshd
/// chrooted into the root, or, for a booted node, the node's own under its own systemd.
struct Node {
    name: String,
    family: Family,
    role: Role,
    root: PathBuf,
    conf: tempfile::TempDir,
    port: u16,
    sshd: Child,
    booted: bool,
}

impl Node {
    fn start(family: Family, role: Role) -> Self {
        Self::create(family, role, false)
    }

    /// A Debian node booted by its own systemd in a container (systemd-nspawn): the real
    /// systemctl, systemd-run and kubelet unit.
    fn boot(role: Role) -> Self {
        Self::create(Family::Debian, role, true)
    }

    fn create(family: Family, role: Role, booted: bool) -> Self {
        let sandbox = sandbox();
        let conf = tempfile::tempdir().unwrap();
        let name = format!(
            "node-{}",
            conf.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_lowercase()
        )
        .replace(['_', '.'], "-");
        // sshd's ChrootDirectory wants root-owned components nobody else may write.
        let root = sandbox.join("nodes").join(&name);
        std::fs::create_dir_all(&root).unwrap();
        let tar = match (family, booted) {
            (Family::Debian, false) => "debian.tar",
            (Family::Debian, true) => "debian-systemd.tar",
            (Family::Rhel, _) => "rhel.tar",
        };
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-xf")
                .arg(sandbox.join(tar)),
        );
        if role != Role::Worker {
            let manifests = root.join("etc/kubernetes/manifests");
            std::fs::create_dir_all(&manifests).unwrap();
            for component in [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
            ] {
                std::fs::write(
                    manifests.join(format!("{component}.yaml")),
                    format!(
                        "spec:\n  containers:\n  - image: registry.k8s.io/{component}:v{OLD}\n"
                    ),
                )
                .unwrap();
            }
        }
        for key in ["host", "client", "stranger"] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", ""])
                    .arg("-f")
                    .arg(conf.path().join(key)),
            );
        }
        let port = free_port();
        let sshd = if booted {
            boot_with_sshd(&name, &root, conf.path(), port)
        } else {
            chrooted_sshd(&root, conf.path(), port)
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {port}: {}",
                std::fs::read_to_string(conf.path().join("boot.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let node = Self {
            name,
            family,
            role,
            root,
            conf,
            port,
            sshd,
            booted,
        };
        node.write_known_hosts("host");
        node
    }

    /// A command run on the node over SSH, as root, inside whatever runs there.
    fn ssh(&self, command: &str) -> Output {
        Command::new("ssh")
            .arg("-i")
            .arg(self.conf.path().join("client"))
            .args(["-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["root@127.0.0.1", command])
            .output()
            .unwrap()
    }

    /// known_hosts naming the node by its Kubernetes name, with the key in `key`.pub.
    fn write_known_hosts(&self, key: &str) {
        let public = std::fs::read_to_string(self.conf.path().join(format!("{key}.pub"))).unwrap();
        let key: Vec<&str> = public.split_whitespace().take(2).collect();
        std::fs::write(
            self.known_hosts(),
            format!("{} {}\n", self.name, key.join(" ")),
        )
        .unwrap();
    }

    fn known_hosts(&self) -> PathBuf {
        self.conf.path().join("known_hosts")
    }

    fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.path(path)).unwrap_or_default()
    }

    fn touch(&self, path: &str) {
        std::fs::write(self.path(path), "").unwrap();
    }

    fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }

    /// A command run inside the node's root.
    fn chroot(&self, command: &str) -> Output {
        Command::new("chroot")
            .arg(&self.root)
            .args(["/bin/bash", "-c", command])
            .output()
            .unwrap()
    }

    /// The installed version of a package, without its revision.
    fn installed(&self, package: &str) -> String {
        let query = match self.family {
            Family::Debian => format!("dpkg-query -W -f='${{Version}}' {package}"),
            Family::Rhel => format!("rpm -q --qf '%{{VERSION}}' {package}"),
        };
        let out = String::from_utf8(self.chroot(&query).stdout).unwrap();
        out.split('-').next().unwrap_or_default().to_owned()
    }

    fn held(&self) -> String {
        match self.family {
            Family::Debian => String::from_utf8(self.chroot("apt-mark showhold").stdout).unwrap(),
            Family::Rhel => self.read("/etc/yum.repos.d/kubernetes.repo"),
        }
    }

    fn repository(&self) -> String {
        match self.family {
            Family::Debian => self.read("/etc/apt/sources.list.d/kubernetes.list"),
            Family::Rhel => self.read("/etc/yum.repos.d/kubernetes.repo"),
        }
    }

    /// The kubeadm and systemctl calls the fake commands recorded.
    fn calls(&self, prefix: &str) -> Vec<String> {
        self.read("/var/lib/upchain-test/calls")
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    fn state(&self) -> String {
        self.read("/var/lib/upchain/state")
    }

    /// Asserts that the script's state file holds each of `lines`.
    fn assert_state_holds(&self, lines: &[&str]) {
        let state = self.state();
        for line in lines {
            assert!(
                state.lines().any(|l| l == *line),
                "{line} missing from\n{state}"
            );
        }
    }

    /// The node Job as upchain-core renders it for this node.
    fn job(&self, mode: JobMode, target: &str, uid: &str) -> Job {
        let mut runner = RunnerSpec {
            ssh_port: i32::from(self.port),
            package_lock_timeout_seconds: 3,
            kubelet_settle_seconds: 0,
            ..RunnerSpec::default()
        };
        runner.repository.url = Some("file:///srv/repo/core:/stable:".to_owned());
        let role = match self.role {
            Role::Worker => NodeRole::Worker,
            _ => NodeRole::ControlPlane,
        };
        let batch = [self.name.clone()];
        NodeJob {
            owner: Owner {
                name: "to-1-35",
                uid,
            },
            runner: &runner,
            node: &self.name,
            node_ip: "127.0.0.1",
            role,
            first_control_plane: self.role == Role::FirstControlPlane,
            kind: UpgradeKind::Minor,
            target: KubeVersion::parse_target(target).unwrap(),
            attempt: 1,
            batch: &batch,
            mode,
            reattach: false,
            control_plane_available: true,
            run_started: 0,
            snapshot_claim: Some("snapshots"),
        }
        .render()
    }

    /// Starts the Job's container command here, its mounts pointing at this node's files.
    fn start_job(&self, mode: JobMode, env: &[(&str, &str)]) -> JobRun {
        self.start_rendered(&self.job(mode, NEW, "uid-1"), env)
    }

    fn start_rendered(&self, job: &Job, env: &[(&str, &str)]) -> JobRun {
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        let command = container.command.as_ref().unwrap();
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap());
        for var in container.env.iter().flatten() {
            cmd.env(&var.name, var.value.clone().unwrap_or_default());
        }
        cmd.env(
            "UPCHAIN_SCRIPT",
            format!("{REPO}/charts/upchain/files/upgrade-node.sh"),
        )
        .env("UPCHAIN_SSH_KEY", self.conf.path().join("client"))
        .env("UPCHAIN_KNOWN_HOSTS", self.known_hosts())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        use std::os::unix::process::CommandExt;
        JobRun {
            child: cmd.spawn().expect("the Job's command starts"),
        }
    }

    fn run_job(&self, mode: JobMode, env: &[(&str, &str)]) -> Finished {
        self.start_job(mode, env).wait()
    }

    /// Waits for a file a fake command leaves when a test holds it mid-way.
    fn wait_for(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.exists(path) {
            assert!(
                Instant::now() < deadline,
                "{path} never appeared on {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills every process running inside the node's root.
    fn kill_processes_inside(&self) {
        for pid in processes_in(&self.root) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }

    /// Kills the upgrade and what it runs (dpkg, its maintainer script), as the OOM killer
    /// or a crash would, leaving the SSH session and the Job's follower alone.
    fn kill_the_upgrade(&self) {
        for pid in processes_in(&self.root) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if ["sshd", " launch ", "tail"]
                .iter()
                .all(|s| !cmdline.contains(s))
            {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.booted {
            // The container's init ends everything in its PID namespace.
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.sshd.id()))
                    .unwrap_or_default();
            for pid in children.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        self.kill_processes_inside();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The host's sshd, its root logins chrooted into the node's root.
fn chrooted_sshd(root: &Path, conf: &Path, port: u16) -> Child {
    let config = conf.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {conf}/host\nPidFile {conf}/sshd.pid\n\
             AuthorizedKeysFile {conf}/client.pub\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nChrootDirectory {root}\n",
            conf = conf.display(),
            root = root.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-f")
        .arg(&config)
        .arg("-E")
        .arg(conf.join("sshd.log"))
        .spawn()
        .expect("sshd starts")
}

/// Boots the node's root with systemd-nspawn (sharing the host's network), its own sshd
/// configured with the test's host key, port and client key.
fn boot_with_sshd(name: &str, root: &Path, conf: &Path, port: u16) -> Child {
    let ssh = root.join("etc/ssh");
    std::fs::copy(conf.join("host"), ssh.join("upchain_host_key")).unwrap();
    std::fs::write(
        ssh.join("sshd_config.d/upchain.conf"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey /etc/ssh/upchain_host_key\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        ),
    )
    .unwrap();
    std::fs::copy(
        conf.join("client.pub"),
        root.join("root/.ssh/authorized_keys"),
    )
    .unwrap();
    let log = std::fs::File::create(conf.join("boot.log")).unwrap();
    Command::new("systemd-nspawn")
        .args([
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--console=passive",
        ])
        .arg(format!("--machine={name}"))
        .arg("--directory")
        .arg(root)
        .arg("--boot")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("systemd-nspawn starts")
}

/// The processes whose root directory is `root`.
fn processes_in(root: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == root))
        .collect()
}

struct JobRun {
    child: Child,
}

struct Finished {
    code: Option<i32>,
    output: String,
}

impl JobRun {
    fn wait(self) -> Finished {
        let out = self.child.wait_with_output().unwrap();
        Finished {
            code: out.status.code(),
            output: String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        }
    }

    /// Cuts the session as a dying Pod does: the ssh client and its shell are killed.
    fn kill(mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// Another process holding a lock file as apt and dpkg do (fcntl), until it is killed;
/// returns once it holds it.
fn hold_lock(path: &Path) -> Child {
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl,sys,time;f=open(sys.argv[1],'a');fcntl.lockf(f,fcntl.LOCK_EX);\
             print('locked',flush=True);time.sleep(600)",
        )
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    holder
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node runs the target, every package is held, the state file says so.
fn assert_upgraded(node: &Node, finished: &Finished) {
    assert_eq!(finished.code, Some(0), "{}", finished.output);
    for package in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(
            node.installed(package),
            NEW,
            "{package}\n{}",
            finished.output
        );
    }
    let held = node.held();
    for package in ["kubeadm", "kubelet", "kubectl"] {
        assert!(held.contains(package), "{package} not held: {held}");
    }
    assert!(
        node.repository().contains("/v1.35/"),
        "{}",
        node.repository()
    );
    node.assert_state_holds(&[
        "STATUS=succeeded",
        "EXIT_CODE=0",
        "VERSION_BEFORE=1.34.3",
        "VERSION_AFTER=1.35.2",
    ]);
    if node.role != Role::Worker {
        assert!(
            node.read("/etc/kubernetes/manifests/kube-apiserver.yaml")
                .contains(":v1.35.2")
        );
    }
}

/// Nothing on the node changed: old packages, old repository.
fn assert_untouched(node: &Node, before: &str) {
    assert_eq!(node.installed("kubelet"), OLD);
    assert_eq!(node.installed("kubeadm"), OLD);
    assert_eq!(node.repository(), before);
}
