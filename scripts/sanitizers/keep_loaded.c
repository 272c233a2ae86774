// Preloaded (LD_PRELOAD) into the sanitizer test runs only: dlclose() leaves
// every library loaded. OpenMPI and PMIx unload their plugins (mca_*.so) in
// MPI_Finalize, and LeakSanitizer, which reports at exit, can then no longer
// name the module a leak was allocated in ("<unknown module>"), so lsan.supp
// could not suppress OpenMPI's own leaks by name without also hiding ours.
#include <dlfcn.h>

int dlclose(void* handle) {
  (void)handle;
  return 0;
}
