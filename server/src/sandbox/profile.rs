//! Sandbox profiles: what a sandbox is made from and the limits it runs under. Read from a TOML file
//! (`--sandboxes`), re-read on SIGHUP like the policy; a bad file keeps the previous profiles.
//!
//! Sizes are Docker's (`512k`, `256m`, `1g`: powers of 1024, a bare number is bytes); durations are
//! humantime's (`90s`, `10m`, `8h`, `30d`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use app::protocol::SandboxProfile;
use serde::Deserialize;

use crate::docker::ContainerSpec;

/// Most profiles in one file.
pub const MAX_PROFILES: usize = 64;
/// Most warm containers one profile may ask for.
pub const MAX_POOL_PER_PROFILE: usize = 32;
/// Most tmpfs mounts and ulimits one profile may have, each.
pub const MAX_MOUNTS: usize = 16;
/// Under gVisor the host's pids limit counts the sandbox kernel's own threads (about 40 when idle, about 10 per
/// process inside; measured), so a lower limit makes the sandbox itself fail.
pub const MIN_GVISOR_PIDS: u64 = 256;
/// Longest `idle_timeout` and `max_lifetime`.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Docker refuses memory limits below 6 MiB.
const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// tmpfs size at `/tmp` and the home directory when a read-only profile names no tmpfs.
const DEFAULT_TMPFS: &str = "64m";
/// The home directory of a sandbox whose profile names no tmpfs.
const DEFAULT_HOME: &str = "/home/sandbox";

/// One profile, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub image: String,
    /// The container's command; `None`: the image's.
    pub command: Option<Vec<String>>,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// Mount point -> size in bytes.
    pub tmpfs: BTreeMap<String, u64>,
    /// Name -> (soft, hard).
    pub ulimits: BTreeMap<String, (i64, i64)>,
    pub network: String,
    pub read_only_rootfs: bool,
    pub user: String,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub pool: usize,
    pub runtime: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfilesFile {
    #[serde(default)]
    profile: BTreeMap<String, ProfileFile>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UlimitFile {
    Both(i64),
    Pair { soft: i64, hard: i64 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    image: String,
    command: Option<Vec<String>>,
    memory: Option<String>,
    cpus: Option<f64>,
    pids: Option<u64>,
    tmpfs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    ulimits: BTreeMap<String, UlimitFile>,
    network: Option<String>,
    read_only_rootfs: Option<bool>,
    user: Option<String>,
    idle_timeout: Option<String>,
    max_lifetime: Option<String>,
    #[serde(default)]
    pool: usize,
    runtime: Option<String>,
    /// Accepted only as `["ALL"]`, which is what every sandbox gets.
    cap_drop: Option<Vec<String>>,
    /// Accepted only as `true`, which is what every sandbox gets.
    no_new_privileges: Option<bool>,
}

/// Parses a Docker size: digits with an optional `b`, `k`, `m` or `g` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size like 512k, 256m or 1g"))?;
    let mult: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("{s:?} is not a size like 512k, 256m or 1g")),
    };
    n.checked_mul(mult).filter(|n| *n > 0).ok_or_else(|| format!("size {s:?} is zero or too large"))
}

/// Parses a duration like `90s`, `10m`, `8h` or `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 90s, 10m or 8h: {e}"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("duration {s:?} is shorter than a second"));
    }
    if d > MAX_DURATION {
        return Err(format!("duration {s:?} is longer than a year"));
    }
    Ok(d)
}

fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= app::protocol::MAX_PROFILE_NAME_LEN
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Profile {
    fn from_file(name: &str, f: ProfileFile) -> Result<Profile, String> {
        if !name_ok(name) {
            return Err(format!(
                "profile name {name:?} must be 1..={} of a-z, 0-9, - and _",
                app::protocol::MAX_PROFILE_NAME_LEN
            ));
        }
        let bad = |what: String| format!("profile {name}: {what}");
        if f.image.trim().is_empty() {
            return Err(bad("image is empty".into()));
        }
        if let Some(c) = &f.command
            && (c.is_empty() || c[0].is_empty())
        {
            return Err(bad("command must be a non-empty list of strings".into()));
        }
        if f.cap_drop.as_ref().is_some_and(|c| c.len() != 1 || !c[0].eq_ignore_ascii_case("ALL")) {
            return Err(bad("cap_drop is always [\"ALL\"] and cannot be changed".into()));
        }
        if f.no_new_privileges == Some(false) {
            return Err(bad("no_new_privileges is always true and cannot be changed".into()));
        }
        let memory_bytes = f.memory.as_deref().map(parse_size).transpose().map_err(bad)?;
        if memory_bytes.is_some_and(|m| m < MIN_MEMORY_BYTES) {
            return Err(bad("memory must be at least 6m (Docker's minimum)".into()));
        }
        if f.cpus.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
            return Err(bad("cpus must be more than 0".into()));
        }
        if f.pids == Some(0) {
            return Err(bad("pids must be at least 1".into()));
        }
        let read_only_rootfs = f.read_only_rootfs.unwrap_or(true);
        let tmpfs_file = match f.tmpfs {
            Some(t) => t,
            None if read_only_rootfs => [("/tmp", DEFAULT_TMPFS), (DEFAULT_HOME, DEFAULT_TMPFS)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            None => BTreeMap::new(),
        };
        if tmpfs_file.len() > MAX_MOUNTS || f.ulimits.len() > MAX_MOUNTS {
            return Err(bad(format!("at most {MAX_MOUNTS} tmpfs mounts and {MAX_MOUNTS} ulimits")));
        }
        let mut tmpfs = BTreeMap::new();
        for (path, size) in tmpfs_file {
            if !path.starts_with('/') || path.contains([',', ':', '\0']) || path.split('/').any(|p| p == "..") {
                return Err(bad(format!("tmpfs mount point {path:?} must be an absolute path")));
            }
            tmpfs.insert(path.clone(), parse_size(&size).map_err(|e| bad(format!("tmpfs {path}: {e}")))?);
        }
        let mut ulimits = BTreeMap::new();
        for (u, v) in f.ulimits {
            if u.is_empty() || !u.chars().all(|c| c.is_ascii_lowercase()) {
                return Err(bad(format!("ulimit {u:?} is not a name like nofile or nproc")));
            }
            let (soft, hard) = match v {
                UlimitFile::Both(n) => (n, n),
                UlimitFile::Pair { soft, hard } => (soft, hard),
            };
            if soft < 0 || hard < soft {
                return Err(bad(format!("ulimit {u}: need 0 <= soft <= hard")));
            }
            ulimits.insert(u, (soft, hard));
        }
        let network = f.network.unwrap_or_else(|| "none".into());
        if network.is_empty() || network.contains(['/', ' ', '\0']) {
            return Err(bad(format!("network {network:?} is not a network name")));
        }
        if network == "host" || network.starts_with("container:") {
            return Err(bad("network must be none or a named network, not the host's or a container's".into()));
        }
        if f.runtime.as_deref() == Some("runsc") && f.pids.is_some_and(|p| p < MIN_GVISOR_PIDS) {
            return Err(bad(format!(
                "runtime \"runsc\" (gVisor) needs pids >= {MIN_GVISOR_PIDS}: the limit also counts gVisor's own threads \
                 (about 10 per process inside)"
            )));
        }
        if f.runtime.as_deref() == Some("runsc") && network != "none" {
            return Err(bad(format!(
                "runtime \"runsc\" (gVisor) runs here only without a network: set network = \"none\", not {network:?}"
            )));
        }
        let user = f.user.unwrap_or_else(|| "65534:65534".into());
        if user.is_empty() || user.contains(['\0', ' ']) {
            return Err(bad(format!("user {user:?} is not a user like 65534:65534")));
        }
        let idle_timeout = parse_duration(f.idle_timeout.as_deref().unwrap_or("10m")).map_err(bad)?;
        let max_lifetime = parse_duration(f.max_lifetime.as_deref().unwrap_or("8h")).map_err(bad)?;
        if f.pool > MAX_POOL_PER_PROFILE {
            return Err(bad(format!("pool must be at most {MAX_POOL_PER_PROFILE}")));
        }
        Ok(Profile {
            name: name.to_string(),
            image: f.image,
            command: f.command,
            memory_bytes,
            cpus: f.cpus,
            pids: f.pids,
            tmpfs,
            ulimits,
            network,
            read_only_rootfs,
            user,
            idle_timeout,
            max_lifetime,
            pool: f.pool,
            runtime: f.runtime.filter(|r| !r.is_empty()),
        })
    }

    /// The home directory: the first tmpfs mount under `/home/`, if any.
    pub fn home(&self) -> Option<&str> {
        self.tmpfs.keys().find(|p| p.starts_with("/home/")).map(String::as_str)
    }

    /// The container to create for this profile, with `name` and `labels`.
    pub fn spec(&self, name: String, labels: BTreeMap<String, String>) -> ContainerSpec {
        let home = self.home().map(str::to_string);
        ContainerSpec {
            image: self.image.clone(),
            name: Some(name),
            cmd: self.command.clone(),
            labels,
            user: Some(self.user.clone()),
            memory_bytes: self.memory_bytes.map(|m| m as i64),
            cpus: self.cpus,
            pids: self.pids.map(|p| p as i64),
            // World-writable like /tmp, so the profile's user may write there whatever its uid.
            tmpfs: self.tmpfs.iter().map(|(p, size)| (p.clone(), format!("size={size},mode=1777"))).collect(),
            network: self.network.clone(),
            read_only_rootfs: self.read_only_rootfs,
            runtime: self.runtime.clone(),
            ulimits: self.ulimits.iter().map(|(n, (s, h))| (n.clone(), *s, *h)).collect(),
            env: home.iter().map(|h| format!("HOME={h}")).collect(),
            working_dir: home,
            // Docker's init (tini) as PID 1 reaps orphans, so a fork bomb's zombies do not hold the pids limit.
            // Under gVisor (the 2022 snapshot Debian 12 packages) tini makes execs crash the sandbox, so not there.
            init: self.runtime.as_deref() != Some("runsc"),
        }
    }

    /// What a client is told about it.
    pub fn summary(&self) -> SandboxProfile {
        SandboxProfile {
            name: self.name.clone(),
            image: self.image.clone(),
            memory_bytes: self.memory_bytes,
            cpus: self.cpus,
            pids: self.pids,
            network: self.network.clone(),
            runtime: self.runtime.clone(),
            idle_timeout_secs: self.idle_timeout.as_secs(),
            max_lifetime_secs: self.max_lifetime.as_secs(),
            pool: self.pool,
        }
    }
}

/// Every profile of one file.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    pub profiles: BTreeMap<String, Arc<Profile>>,
    /// The file they came from (`None`: none given, so no profile exists).
    pub source: Option<PathBuf>,
}

impl Profiles {
    pub fn parse(text: &str) -> Result<Profiles, String> {
        let file: ProfilesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.profile.len() > MAX_PROFILES {
            return Err(format!("more than {MAX_PROFILES} profiles"));
        }
        let mut profiles = BTreeMap::new();
        for (name, f) in file.profile {
            profiles.insert(name.clone(), Arc::new(Profile::from_file(&name, f)?));
        }
        Ok(Profiles { profiles, source: None })
    }

    /// Reads and checks a profiles file; the message names the file.
    pub fn load(path: &Path) -> Result<Profiles, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the sandbox profiles {}: {e}", path.display()))?;
        let mut p = Profiles::parse(&text).map_err(|e| format!("sandbox profiles {}: {e}", path.display()))?;
        p.source = Some(path.to_path_buf());
        Ok(p)
    }

    /// Refuses profiles that name a runtime the daemon does not have.
    pub fn check_runtimes(&self, available: &[String]) -> Result<(), String> {
        for p in self.profiles.values() {
            if let Some(r) = &p.runtime
                && !available.iter().any(|a| a == r)
            {
                return Err(format!(
                    "profile {}: the Docker daemon has no runtime {r:?} (it has: {}); register it in the daemon's \
                     configuration (\"runtimes\" in daemon.json) or remove runtime from the profile",
                    p.name,
                    available.join(", ")
                ));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.profiles.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [profile.scratch]
        image = "porthole-test/bash:2"
        memory = "256m"
        cpus = 0.5
        pids = 128
        tmpfs = { "/tmp" = "16m", "/home/sandbox" = "16m" }
        network = "none"
        user = "65534:65534"
        idle_timeout = "10m"
        max_lifetime = "8h"
        pool = 2
        ulimits = { nofile = 1024, nproc = { soft = 64, hard = 128 } }

        [profile.gvisor]
        image = "porthole-test/bash:2"
        runtime = "runsc"
    "#;

    #[test]
    fn the_example_parses_with_docker_sizes_and_defaults() {
        let p = Profiles::parse(EXAMPLE).unwrap();
        let s = p.get("scratch").unwrap();
        assert_eq!(s.memory_bytes, Some(256 << 20));
        assert_eq!(s.tmpfs.get("/tmp"), Some(&(16 << 20)));
        assert_eq!(s.idle_timeout, Duration::from_secs(600));
        assert_eq!(s.max_lifetime, Duration::from_secs(8 * 3600));
        assert_eq!(s.ulimits.get("nproc"), Some(&(64, 128)));
        assert_eq!(s.home(), Some("/home/sandbox"));
        let g = p.get("gvisor").unwrap();
        assert_eq!((g.network.as_str(), g.user.as_str(), g.read_only_rootfs, g.pool), ("none", "65534:65534", true, 0));
        assert_eq!(g.tmpfs.len(), 2, "a read-only profile gets /tmp and a home directory");
        let spec = s.spec("n".into(), BTreeMap::new());
        assert_eq!(spec.tmpfs.get("/tmp").map(String::as_str), Some("size=16777216,mode=1777"));
        assert!(spec.init && spec.read_only_rootfs);
        assert_eq!(spec.working_dir.as_deref(), Some("/home/sandbox"));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert!(parse_size("1.5g").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("12x").is_err());
        assert!(parse_size("99999999999999g").is_err());
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10ms").is_err());
        assert!(parse_duration("100000d").is_err());
    }

    #[test]
    fn mistakes_are_refused_with_the_profile_named() {
        let bad = |body: &str| Profiles::parse(&format!("[profile.p]\nimage = \"i\"\n{body}")).unwrap_err();
        assert!(bad("runtime = \"runsc\"\nnetwork = \"bridge\"").contains("network = \"none\""));
        assert!(bad("runtime = \"runsc\"\npids = 64").contains("256"));
        assert!(bad("memory = \"1m\"").contains("6m"));
        assert!(bad("memory = \"lots\"").contains("profile p"));
        assert!(bad("cap_drop = [\"NET_RAW\"]").contains("ALL"));
        assert!(bad("no_new_privileges = false").contains("always"));
        assert!(bad("network = \"host\"").contains("host"));
        assert!(bad("pool = 1000").contains("pool"));
        assert!(bad("tmpfs = { \"tmp\" = \"1m\" }").contains("absolute"));
        assert!(bad("privileged = true").contains("privileged"));
        assert!(bad("idle_timeout = \"forever\"").contains("duration"));
        assert!(Profiles::parse("[profile.\"Bad Name\"]\nimage = \"i\"").unwrap_err().contains("name"));
        assert!(Profiles::parse("[profile.p]\nimage = \"\"").unwrap_err().contains("image"));
    }

    #[test]
    fn runtimes_the_daemon_lacks_are_refused() {
        let p = Profiles::parse(EXAMPLE).unwrap();
        let e = p.check_runtimes(&["runc".into()]).unwrap_err();
        assert!(e.contains("gvisor") && e.contains("runsc"), "{e}");
        assert!(p.check_runtimes(&["runc".into(), "runsc".into()]).is_ok());
    }
}
