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

/// One node: a root file system and the sshd whose root login enters it.
struct Node {
    name: String,
    family: Family,
    role: Role,
    root: PathBuf,
    conf: tempfile::TempDir,
    port: u16,
    sshd: Child,
}

impl Node {
    fn start(family: Family, role: Role) -> Self {
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
        let tar = match family {
            Family::Debian => "debian.tar",
            Family::Rhel => "rhel.tar",
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
        let config = conf.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {conf}/host\nPidFile {conf}/sshd.pid\n\
                 AuthorizedKeysFile {conf}/client.pub\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nChrootDirectory {root}\n",
                conf = conf.path().display(),
                root = root.display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let sshd = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(conf.path().join("sshd.log"))
            .spawn()
            .expect("sshd starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
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
        };
        node.write_known_hosts("host");
        node
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

    /// The node Job as upchain-core renders it for this node.
    fn job(&self, mode: JobMode, target: &str, uid: &str) -> Job {
        let mut runner = RunnerSpec {
            ssh_port: i32::from(self.port),
            package_lock_timeout_seconds: 3,
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
            control_plane_available: true,
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
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        self.kill_processes_inside();
        let _ = std::fs::remove_dir_all(&self.root);
    }
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
    let state = node.state();
    for line in [
        "STATUS=succeeded",
        "EXIT_CODE=0",
        "VERSION_BEFORE=1.34.3",
        "VERSION_AFTER=1.35.2",
    ] {
        assert!(
            state.lines().any(|l| l == line),
            "{line} missing from\n{state}"
        );
    }
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

fn upgrades_every_role(family: Family) {
    for role in [Role::FirstControlPlane, Role::ControlPlane, Role::Worker] {
        let node = Node::start(family, role);
        let finished = node.run_job(JobMode::Upgrade, &[]);
        assert_upgraded(&node, &finished);
        let kubeadm = node.calls("kubeadm");
        let expected = match role {
            Role::FirstControlPlane => "kubeadm upgrade apply -y v1.35.2",
            _ => "kubeadm upgrade node",
        };
        assert_eq!(kubeadm, [expected], "{role:?}");
        assert!(
            finished
                .output
                .contains("starting the upgrade in its own session")
        );
        assert!(
            finished
                .output
                .contains("verified: kubelet 1.35.2 is active")
        );
        // Run again: every step is already done, nothing runs twice.
        let again = node.run_job(JobMode::Upgrade, &[]);
        assert_eq!(again.code, Some(0), "{}", again.output);
        assert!(
            again.output.contains("already finished"),
            "{}",
            again.output
        );
        assert_eq!(node.calls("kubeadm").len(), 1);
    }
}

#[test]
fn every_role_upgrades_on_a_debian_node_with_the_real_apt() {
    upgrades_every_role(Family::Debian);
}

#[test]
fn every_role_upgrades_on_a_rhel_family_node_with_the_real_dnf() {
    upgrades_every_role(Family::Rhel);
}

fn cut_mid(hold: &str) {
    let node = Node::start(Family::Debian, Role::FirstControlPlane);
    node.touch(&format!("/var/lib/upchain-test/hold-{hold}"));
    let first = node.start_job(JobMode::Upgrade, &[]);
    node.wait_for(&format!("/var/lib/upchain-test/in-{hold}"));
    first.kill();
    // The upgrade goes on without the session; a new Job attaches and reports it.
    let second = node.start_job(JobMode::Upgrade, &[]);
    std::fs::remove_file(node.path(&format!("/var/lib/upchain-test/hold-{hold}"))).unwrap();
    let finished = second.wait();
    assert!(
        finished
            .output
            .contains("attaching to the upgrade already running")
            || finished.output.contains("already finished"),
        "{}",
        finished.output
    );
    assert_upgraded(&node, &finished);
    assert_eq!(node.calls("kubeadm").len(), 1, "one kubeadm upgrade apply");
}

#[test]
fn a_session_cut_mid_dpkg_leaves_a_node_the_next_job_reports_upgraded() {
    cut_mid("dpkg");
}

#[test]
fn a_session_cut_mid_kubeadm_leaves_a_node_the_next_job_reports_upgraded() {
    cut_mid("kubeadm");
}

#[test]
fn two_jobs_at_once_never_run_two_upgrades() {
    let node = Node::start(Family::Debian, Role::FirstControlPlane);
    node.touch("/var/lib/upchain-test/hold-kubeadm");
    let first = node.start_job(JobMode::Upgrade, &[]);
    let second = node.start_job(JobMode::Upgrade, &[]);
    node.wait_for("/var/lib/upchain-test/in-kubeadm");
    // A Job of another K8sUpgrade is refused while this run holds the node.
    let other = node
        .start_rendered(&node.job(JobMode::Upgrade, NEW, "uid-2"), &[])
        .wait();
    assert_eq!(other.code, Some(18), "{}", other.output);
    assert!(other.output.contains("holds this node"), "{}", other.output);
    std::fs::remove_file(node.path("/var/lib/upchain-test/hold-kubeadm")).unwrap();
    let (first, second) = (first.wait(), second.wait());
    assert_upgraded(&node, &first);
    assert_eq!(second.code, Some(0), "{}", second.output);
    assert_eq!(
        node.calls("kubeadm").len(),
        1,
        "{:?}",
        node.calls("kubeadm")
    );
}

#[test]
fn an_interrupted_dpkg_is_repaired_by_the_next_attempt() {
    let node = Node::start(Family::Debian, Role::Worker);
    node.touch("/var/lib/upchain-test/hold-dpkg");
    let first = node.start_job(JobMode::Upgrade, &[]);
    node.wait_for("/var/lib/upchain-test/in-dpkg");
    // The node loses the upgrade mid-dpkg.
    node.kill_the_upgrade();
    let lost = first.wait();
    assert_eq!(lost.code, Some(21), "{}", lost.output);
    std::fs::remove_file(node.path("/var/lib/upchain-test/hold-dpkg")).unwrap();
    let audit = node.chroot("dpkg --audit");
    assert!(
        !String::from_utf8_lossy(&audit.stdout).trim().is_empty(),
        "dpkg was interrupted"
    );
    let finished = node.run_job(JobMode::Upgrade, &[]);
    assert!(
        finished.output.contains("ended without a result"),
        "{}",
        finished.output
    );
    assert_upgraded(&node, &finished);
}

#[test]
fn a_package_lock_held_by_another_process_fails_with_its_own_code() {
    let node = Node::start(Family::Debian, Role::Worker);
    let before = node.repository();
    // apt and dpkg lock with fcntl: hold it the same way from outside.
    let lock = node.path("/var/lib/dpkg/lock-frontend");
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg("import fcntl,sys,time;f=open(sys.argv[1],'a');fcntl.lockf(f,fcntl.LOCK_EX);print('locked',flush=True);time.sleep(120)")
        .arg(&lock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let finished = node.run_job(JobMode::Upgrade, &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(finished.code, Some(12), "{}", finished.output);
    assert!(
        finished.output.contains("lock stayed taken"),
        "{}",
        finished.output
    );
    assert_untouched(&node, &before);
    assert!(node.held().contains("kubelet"));
}

#[test]
fn the_prepare_check_changes_nothing_and_catches_a_missing_package() {
    let node = Node::start(Family::Debian, Role::FirstControlPlane);
    let before = node.repository();
    let ready = node.run_job(JobMode::Prepare, &[]);
    assert_eq!(ready.code, Some(0), "{}", ready.output);
    assert!(
        ready.output.contains("ready for 1.35.2"),
        "{}",
        ready.output
    );
    // The first control-plane node asks the target's kubeadm for its plan.
    assert_eq!(node.calls("kubeadm"), ["kubeadm upgrade plan v1.35.2"]);
    let missing = node
        .start_rendered(&node.job(JobMode::Prepare, "1.35.9", "uid-1"), &[])
        .wait();
    assert_eq!(missing.code, Some(11), "{}", missing.output);
    assert!(
        missing
            .output
            .contains("not found in the configured repository"),
        "{}",
        missing.output
    );
    assert_untouched(&node, &before);
    assert!(
        !node.exists("/var/lib/upchain/state"),
        "prepare starts no run"
    );
}

#[test]
fn the_prepare_check_works_on_the_rhel_family() {
    let node = Node::start(Family::Rhel, Role::Worker);
    let before = node.repository();
    let ready = node.run_job(JobMode::Prepare, &[]);
    assert_eq!(ready.code, Some(0), "{}", ready.output);
    let missing = node
        .start_rendered(&node.job(JobMode::Prepare, "1.35.9", "uid-1"), &[])
        .wait();
    assert_eq!(missing.code, Some(11), "{}", missing.output);
    assert_untouched(&node, &before);
}

#[test]
fn an_unknown_os_is_refused_before_anything_changes() {
    let node = Node::start(Family::Debian, Role::Worker);
    let before = node.repository();
    std::fs::remove_file(node.path("/etc/os-release")).unwrap();
    std::fs::write(node.path("/etc/os-release"), "ID=alpine\nVERSION_ID=3.20\n").unwrap();
    for mode in [JobMode::Prepare, JobMode::Upgrade] {
        let finished = node.run_job(mode, &[]);
        assert_eq!(finished.code, Some(10), "{}", finished.output);
        assert!(
            finished.output.contains("unsupported OS 'alpine'"),
            "{}",
            finished.output
        );
    }
    assert_untouched(&node, &before);
}

#[test]
fn a_host_key_mismatch_is_refused_and_accept_new_is_an_explicit_choice() {
    let node = Node::start(Family::Debian, Role::Worker);
    node.write_known_hosts("stranger");
    let finished = node.run_job(JobMode::Upgrade, &[]);
    assert_eq!(finished.code, Some(255), "{}", finished.output);
    assert!(
        finished.output.to_lowercase().contains("host key"),
        "{}",
        finished.output
    );
    assert!(!node.exists("/var/lib/upchain"), "nothing reached the node");
    std::fs::write(node.known_hosts(), "").unwrap();
    let empty = node.run_job(JobMode::Upgrade, &[]);
    assert_eq!(empty.code, Some(2), "{}", empty.output);
    assert!(
        empty.output.contains("no known host keys"),
        "{}",
        empty.output
    );
    let accepted = node.run_job(
        JobMode::Upgrade,
        &[("HOST_KEY_POLICY", HostKeyPolicy::AcceptNew.as_str())],
    );
    assert!(
        accepted.output.contains("host keys are not checked"),
        "{}",
        accepted.output
    );
    assert_upgraded(&node, &accepted);
}

#[test]
fn injection_strings_are_refused_before_anything_reaches_the_node() {
    let node = Node::start(Family::Debian, Role::Worker);
    for (key, value) in [
        ("TARGET_VERSION", "1.35.2;id"),
        ("TARGET_VERSION", "1.35.2\nid"),
        ("NODE_NAME", "node-1;touch /pwned"),
        ("NODE_NAME", "$(touch /pwned)"),
        ("NODE_IP", "127.0.0.1 -oProxyCommand=touch"),
        ("SSH_USER", "root@evil"),
        ("REPOSITORY_URL", "file:///srv/repo' ;touch /pwned;'"),
    ] {
        let finished = node.run_job(JobMode::Upgrade, &[(key, value)]);
        assert_eq!(finished.code, Some(2), "{key}={value}: {}", finished.output);
    }
    assert!(!node.exists("/var/lib/upchain"), "nothing reached the node");
    // The node script refuses them itself, whoever wrote its parameters.
    std::fs::create_dir_all(node.path("/var/lib/upchain")).unwrap();
    std::fs::copy(
        format!("{REPO}/charts/upchain/files/upgrade-node.sh"),
        node.path("/var/lib/upchain/upgrade-node.sh"),
    )
    .unwrap();
    for params in [
        "TARGET_VERSION='1.35.2;id'\nUPGRADE_KIND='minor'\nNODE_NAME='n'\nNODE_ROLE='worker'\n",
        "TARGET_VERSION='1.35.2'\nUPGRADE_KIND='minor'\nNODE_NAME='n;id'\nNODE_ROLE='worker'\n",
        "TARGET_VERSION='1.35.2'\nUPGRADE_KIND='minor'\nNODE_NAME='n'\nNODE_ROLE='worker'\nPATH='/tmp'\n",
        "TARGET_VERSION=$(id)\n",
    ] {
        std::fs::write(node.path("/var/lib/upchain/params.env"), params).unwrap();
        let out = node
            .chroot("/bin/bash /var/lib/upchain/upgrade-node.sh run /var/lib/upchain/params.env");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{params}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!node.exists("/pwned"));
    assert_eq!(node.installed("kubelet"), OLD);
}

#[test]
fn a_job_that_names_the_wrong_role_is_refused() {
    let node = Node::start(Family::Debian, Role::Worker);
    let finished = node.run_job(JobMode::Upgrade, &[("NODE_ROLE", "control-plane")]);
    assert_eq!(finished.code, Some(2), "{}", finished.output);
    assert!(
        finished.output.contains("is a worker node"),
        "{}",
        finished.output
    );
    assert_eq!(node.installed("kubelet"), OLD);
}

#[test]
fn a_kubelet_that_does_not_come_back_fails_with_its_own_code_and_packages_stay_held() {
    let node = Node::start(Family::Debian, Role::Worker);
    node.touch("/var/lib/upchain-test/kubelet-fails");
    let finished = node.run_job(JobMode::Upgrade, &[("KUBELET_TIMEOUT", "2")]);
    assert_eq!(finished.code, Some(16), "{}", finished.output);
    assert!(node.state().contains("EXIT_CODE=16"), "{}", node.state());
    assert!(node.held().contains("kubelet"));
}

#[test]
fn systemd_run_detaches_the_upgrade_where_systemd_runs() {
    let node = Node::start(Family::Debian, Role::Worker);
    std::fs::create_dir_all(node.path("/run/systemd/system")).unwrap();
    let finished = node.run_job(JobMode::Upgrade, &[]);
    assert_upgraded(&node, &finished);
    let units = node.calls("systemd-run --unit=upchain-node-upgrade-to-1-35-");
    assert_eq!(units.len(), 1, "{:?}", node.calls("systemd-run"));
}

#[test]
fn rollback_after_a_minor_upgrade_returns_a_worker_to_the_old_minor() {
    for family in [Family::Debian, Family::Rhel] {
        let worker = Node::start(family, Role::Worker);
        assert_upgraded(&worker, &worker.run_job(JobMode::Upgrade, &[]));
        let out = worker.chroot(&format!(
            "/bin/bash /var/lib/upchain/upgrade-node.sh rollback {OLD}"
        ));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{family:?}: {text}");
        for package in ["kubeadm", "kubelet", "kubectl"] {
            assert_eq!(worker.installed(package), OLD, "{family:?} {package}");
            assert!(worker.held().contains(package), "{family:?} {package}");
        }
        assert!(
            worker.repository().contains("/v1.34/"),
            "{}",
            worker.repository()
        );
        let state = worker.state();
        for line in [
            "RUN_ID=rollback-1.34.3",
            "STATUS=succeeded",
            "VERSION_AFTER=1.34.3",
        ] {
            assert!(
                state.lines().any(|l| l == line),
                "{line} missing from\n{state}"
            );
        }
    }
    let control_plane = Node::start(Family::Debian, Role::FirstControlPlane);
    assert_upgraded(
        &control_plane,
        &control_plane.run_job(JobMode::Upgrade, &[]),
    );
    let out = control_plane.chroot(&format!(
        "/bin/bash /var/lib/upchain/upgrade-node.sh rollback {OLD}"
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kubeadm cannot downgrade a control plane")
    );
    assert_eq!(control_plane.installed("kubelet"), NEW);
}
