//! The derive's compile errors, pinned: each points at the user's code and says what to
//! write instead (`tests/ui/*.stderr`; regenerate with `TRYBUILD=overwrite` after a
//! deliberate change of wording).

#[test]
fn derive_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
