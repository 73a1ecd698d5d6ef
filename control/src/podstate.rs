//! Pod registrations: the JSON records `nodeplane-cni` leaves in the state
//! directory (one file per pod interface, written atomically) and the agent's
//! side that reads them back into `PodRoute`s. Owns only the file format and the
//! directory; it never touches interfaces.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use shared::net::parse_mac;
use shared::snapshot::PodRoute;

/// Where the CNI plugin registers pods unless its config says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/nodeplane/pods";

/// One pod interface as the CNI plugin set it up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub container_id: String,
    /// The interface name inside the pod (CNI_IFNAME).
    pub ifname: String,
    /// The pod's network namespace path (CNI_NETNS).
    pub netns: String,
    /// The pod's IPv4 address (assigned as /32).
    pub ip: Ipv4Addr,
    /// The pod-side MAC.
    pub mac: String,
    /// The host side of the veth pair (in the node's namespace).
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: String,
    #[serde(default)]
    pub pod_namespace: String,
    #[serde(default)]
    pub pod_name: String,
}

impl PodRecord {
    /// The route the dataplane needs for this pod; `None` when the record is
    /// unusable (bad MAC, no interface index).
    pub fn to_route(&self) -> Option<PodRoute> {
        if self.host_ifindex == 0 || self.host_ifname.is_empty() {
            return None;
        }
        let mac = parse_mac(&self.mac)?;
        let host_mac = parse_mac(&self.host_mac)?;
        let name = match (self.pod_namespace.is_empty(), self.pod_name.is_empty()) {
            (_, true) => String::new(),
            (true, false) => self.pod_name.clone(),
            (false, false) => format!("{}/{}", self.pod_namespace, self.pod_name),
        };
        Some(PodRoute {
            ip: self.ip,
            mac,
            host_ifindex: self.host_ifindex,
            host_mac,
            name,
        })
    }

    /// The file this record lives in inside the state directory.
    pub fn file_name(&self) -> String {
        record_file_name(&self.container_id, &self.ifname)
    }
}

/// `<containerId>_<ifname>.json` (the CNI plugin validates both: no '/').
pub fn record_file_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}_{ifname}.json")
}

/// Writes `rec` into `dir` atomically (temporary file, fsync, rename), creating
/// the directory if needed. Readers never see a half-written record.
pub fn write_record(dir: &Path, rec: &PodRecord) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = dir.join(rec.file_name());
    let tmp = dir.join(format!(".{}.tmp{}", rec.file_name(), std::process::id()));
    let body = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// Reads one record; `Ok(None)` when it does not exist.
pub fn read_record(dir: &Path, container_id: &str, ifname: &str) -> io::Result<Option<PodRecord>> {
    let path = dir.join(record_file_name(container_id, ifname));
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a record; a missing record is not an error.
pub fn remove_record(dir: &Path, container_id: &str, ifname: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(record_file_name(container_id, ifname))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What identifies one version of a file: (mtime, length, inode). A record is
/// replaced by rename, so a rewrite always changes the inode.
type FileStamp = (SystemTime, u64, u64);

/// Parsed records keyed by path, valid while the file's stamp is unchanged.
type Cache = HashMap<PathBuf, (FileStamp, Result<PodRecord, String>)>;

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// Every usable record in `dir` (sorted by file name) and one message per file
/// that could not be used, naming the file. A missing directory means no pods.
/// Files whose modification time and length are unchanged since the last call
/// are not parsed again, so calling this every 100 ms is cheap.
/// File in the state directory where the agent publishes this node's pod
/// CIDR (one per line) for CNI configs whose subnet is `usePodCidr`.
pub const POD_CIDR_FILE: &str = "pod-cidr";

/// The first pod CIDR the agent published in `dir`, if any.
pub fn read_pod_cidr(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(POD_CIDR_FILE)).ok()?;
    text.lines()
        .map(str::trim)
        .find(|l| l.parse::<shared::Ipv4Cidr>().is_ok())
        .map(str::to_string)
}

/// Publishes `cidrs` for `read_pod_cidr` (atomically: temp file + rename).
/// Unchanged content is not rewritten.
pub fn write_pod_cidrs(dir: &Path, cidrs: &[shared::Ipv4Cidr]) -> io::Result<()> {
    let text: String = cidrs.iter().map(|c| format!("{c}\n")).collect();
    let path = dir.join(POD_CIDR_FILE);
    if fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{POD_CIDR_FILE}.tmp"));
    fs::write(&tmp, text)?;
    fs::rename(tmp, path)
}

pub fn load_pods(dir: &Path) -> (Vec<PodRecord>, Vec<String>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (records, errors),
        Err(e) => {
            errors.push(format!(
                "{}: cannot read the pod state directory: {e}",
                dir.display()
            ));
            return (records, errors);
        }
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || !name.ends_with(".json") {
                    continue;
                }
                paths.push(entry.path());
            }
            Err(e) => errors.push(format!("{}: {e}", dir.display())),
        }
    }
    paths.sort();
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    // Forget files of this directory that are gone.
    cache.retain(|p, _| p.parent() != Some(dir) || paths.contains(p));
    for path in paths {
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let stamp: FileStamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
            meta.ino(),
        );
        let fresh = matches!(cache.get(&path), Some((s, _)) if *s == stamp);
        if !fresh {
            let parsed = parse_record_file(&path);
            cache.insert(path.clone(), (stamp, parsed));
        }
        match cache.get(&path).map(|(_, r)| r) {
            Some(Ok(rec)) => records.push(rec.clone()),
            Some(Err(msg)) => errors.push(format!("{}: {msg}", path.display())),
            None => {}
        }
    }
    (records, errors)
}

fn parse_record_file(path: &Path) -> Result<PodRecord, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let rec: PodRecord =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a pod record: {e}"))?;
    if rec.to_route().is_none() {
        return Err(format!(
            "unusable pod record (mac {:?}, hostMac {:?}, hostIfname {:?}, hostIfindex {})",
            rec.mac, rec.host_mac, rec.host_ifname, rec.host_ifindex
        ));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, ip: [u8; 4]) -> PodRecord {
        PodRecord {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            ip: Ipv4Addr::from(ip),
            mac: "02:00:00:00:aa:01".into(),
            host_ifname: "np0123456789a".into(),
            host_ifindex: 7,
            host_mac: "02:00:00:00:bb:01".into(),
            pod_namespace: "default".into(),
            pod_name: "a1".into(),
        }
    }

    #[test]
    fn json_uses_the_cni_field_names() {
        let v = serde_json::to_value(rec("c1", [198, 19, 1, 10])).unwrap();
        for key in [
            "containerId",
            "ifname",
            "netns",
            "ip",
            "mac",
            "hostIfname",
            "hostIfindex",
            "hostMac",
            "podNamespace",
            "podName",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["ip"], "198.19.1.10");
        assert_eq!(v["hostIfindex"], 7);
    }

    #[test]
    fn to_route_parses_macs_and_names_the_pod() {
        let r = rec("c1", [198, 19, 1, 10]).to_route().unwrap();
        assert_eq!(r.ip, Ipv4Addr::new(198, 19, 1, 10));
        assert_eq!(r.mac, [2, 0, 0, 0, 0xaa, 1]);
        assert_eq!(r.host_mac, [2, 0, 0, 0, 0xbb, 1]);
        assert_eq!(r.host_ifindex, 7);
        assert_eq!(r.name, "default/a1");

        let mut bad = rec("c1", [198, 19, 1, 10]);
        bad.mac = "zz".into();
        assert!(bad.to_route().is_none());
        let mut bad = rec("c1", [198, 19, 1, 10]);
        bad.host_ifindex = 0;
        assert!(bad.to_route().is_none());
    }

    #[test]
    fn write_read_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("pods");
        let r = rec("c1", [198, 19, 1, 10]);
        let path = write_record(&sub, &r).unwrap();
        assert_eq!(path, sub.join("c1_eth0.json"));
        assert_eq!(read_record(&sub, "c1", "eth0").unwrap(), Some(r));
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 1);
        remove_record(&sub, "c1", "eth0").unwrap();
        assert_eq!(read_record(&sub, "c1", "eth0").unwrap(), None);
        remove_record(&sub, "c1", "eth0").unwrap(); // idempotent
    }

    #[test]
    fn pod_cidr_round_trips_and_is_not_a_pod_record() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(read_pod_cidr(d), None);
        let c: shared::Ipv4Cidr = "198.19.1.0/24".parse().unwrap();
        write_pod_cidrs(d, &[c]).unwrap();
        assert_eq!(read_pod_cidr(d).as_deref(), Some("198.19.1.0/24"));
        let (records, errors) = load_pods(d);
        assert!(records.is_empty() && errors.is_empty(), "{errors:?}");
        fs::write(d.join(POD_CIDR_FILE), "garbage\n").unwrap();
        assert_eq!(read_pod_cidr(d), None);
    }

    #[test]
    fn load_pods_reads_records_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_record(d, &rec("c1", [198, 19, 1, 10])).unwrap();
        write_record(d, &rec("c2", [198, 19, 1, 11])).unwrap();
        fs::write(d.join("broken.json"), b"{not json").unwrap();
        let mut badmac = rec("c3", [198, 19, 1, 12]);
        badmac.host_mac = "nope".into();
        fs::write(d.join("c3_eth0.json"), serde_json::to_vec(&badmac).unwrap()).unwrap();
        fs::write(d.join(".c4_eth0.json.tmp1"), b"partial").unwrap();
        fs::write(d.join("README"), b"ignored").unwrap();

        let (recs, errs) = load_pods(d);
        let ips: Vec<Ipv4Addr> = recs.iter().map(|r| r.ip).collect();
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(198, 19, 1, 10), Ipv4Addr::new(198, 19, 1, 11)]
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("broken.json")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("c3_eth0.json")), "{errs:?}");

        // Changes are seen on the next call (new length/mtime), removals too.
        remove_record(d, "c1", "eth0").unwrap();
        let mut moved = rec("c2", [198, 19, 1, 99]);
        moved.pod_name = "a-renamed-pod".into();
        write_record(d, &moved).unwrap();
        let (recs, _) = load_pods(d);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].ip, Ipv4Addr::new(198, 19, 1, 99));
    }

    #[test]
    fn load_pods_on_a_missing_directory_is_empty_without_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (recs, errs) = load_pods(&dir.path().join("absent"));
        assert!(recs.is_empty());
        assert!(errs.is_empty());
    }
}
