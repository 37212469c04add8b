//! `docs/reference.md` is exactly what `capwin_api::reference` generates from the CRD schemas.
//! After changing a type: `CAPWIN_UPDATE_DOCS=1 cargo test -p capwin-api --test reference`.

use std::path::PathBuf;

#[test]
fn docs_reference_matches_the_types() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/reference.md");
    let want = capwin_api::reference::reference_markdown();
    if std::env::var_os("CAPWIN_UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == want,
        "docs/reference.md drifted from the CRD types; regenerate with `{}`",
        capwin_api::reference::REGENERATE
    );
}
