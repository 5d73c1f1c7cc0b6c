//go:build cgo

package kernels

/*
#include <stdlib.h>
// Exported by OpenBLAS (pthreads build), not declared in its headers.
void openblas_read_env(void);
int blas_thread_shutdown_(void);
int openblas_thread_timeout(void);

// set_thread_timeout makes OpenBLAS's worker threads sleep after 2^bits
// cycles without work: it re-reads the environment, which OpenBLAS reads
// only when loaded, and stops the threads; the next parallel call starts
// them again with the new timeout.
static void set_thread_timeout(const char *bits) {
	setenv("OPENBLAS_THREAD_TIMEOUT", bits, 1);
	openblas_read_env();
	blas_thread_shutdown_();
}
*/
import "C"

import (
	"fmt"
	"os"
	"unsafe"
)

// ThreadTimeoutEnv is OpenBLAS's own variable: its worker threads spin
// (sched_yield) for 2^value CPU cycles after a call before they sleep.
const ThreadTimeoutEnv = "OPENBLAS_THREAD_TIMEOUT"

// DefaultThreadTimeout is the spin rankzip gives OpenBLAS's threads,
// chosen by BenchmarkThreadTimeout: OpenBLAS's own default (2^28 cycles,
// ~0.1 s) keeps a core busy yielding while Go code (norms, softmax, the
// float64 widening of the statistics) runs between BLAS calls; 2^16 cycles
// (~20 µs) still bridges back-to-back calls such as attention's per-head
// products.
const DefaultThreadTimeout = 16

// SetThreadTimeout sets the spin of OpenBLAS's worker threads to 2^bits
// cycles (bits in [4, 30], OpenBLAS's range). It must not run while another
// goroutine is inside OpenBLAS.
func SetThreadTimeout(bits int) error {
	if bits < 4 || bits > 30 {
		return fmt.Errorf("kernels: OpenBLAS thread timeout 2^%d cycles: want an exponent in [4, 30]", bits)
	}
	s := C.CString(fmt.Sprint(bits))
	defer C.free(unsafe.Pointer(s))
	C.set_thread_timeout(s)
	return nil
}

// ThreadTimeout is the exponent OpenBLAS now uses (0: its built-in default).
func ThreadTimeout() int { return int(C.openblas_thread_timeout()) }

func init() {
	// A value set by the user wins; OpenBLAS has read it already.
	if _, set := os.LookupEnv(ThreadTimeoutEnv); !set {
		if err := SetThreadTimeout(DefaultThreadTimeout); err != nil {
			panic(err)
		}
	}
}
