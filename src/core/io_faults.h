// Failures injected into the saving paths, for tests that prove what a failed
// write, flush or rename leaves behind (the previous file or checkpoint,
// whole, and no temporaries). Nothing is armed unless a test arms it; the
// saving code asks take_io_fault() at each step (an atomic load when unarmed).
#pragma once

namespace mf {

enum class IoStep { Write, Flush, Rename };

// Arms one failure: the (skip + 1)-th `step` from now fails with errno `err`
// (Write: the stream reports a write error). One shot.
void inject_io_fault(IoStep step, int skip = 0, int err = 5 /* EIO */);
// Makes renameat2(RENAME_EXCHANGE) report EINVAL, as on a filesystem without
// it, so that checkpoints take their two-rename fallback. Stays until cleared.
void force_rename_exchange_fallback(bool on);
void clear_io_faults();

// For the saving code: true (and errno set to the armed error) when this step fails now.
bool take_io_fault(IoStep step);
bool rename_exchange_unavailable();

}  // namespace mf
