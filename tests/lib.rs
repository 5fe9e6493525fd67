//! End-to-end tests of Remodel's model layer, in `tests/`: one test binary per subject
//! (`models`, `relations`, `live`, `model_races`, `tutorial`, `batched`, `compile_fail`), the
//! Starfleet models and fixtures they share in `tests/common/`, and the derive's compile
//! errors in `ui/`. This library is empty; a package needs a target besides its tests.
