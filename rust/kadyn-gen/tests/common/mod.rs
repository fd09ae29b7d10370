//! Helpers shared by the kadyn-gen integration tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use kadyn_gen::lock::LOCK_FILE;

/// A stop flag that never stops.
pub fn never() -> bool {
    false
}

/// Every file of a dataset directory (folders included, by relative path) with its bytes; the
/// lock file is not part of the dataset.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, at: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(at).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let name = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                if name != LOCK_FILE {
                    out.insert(name, fs::read(&path).unwrap());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}
