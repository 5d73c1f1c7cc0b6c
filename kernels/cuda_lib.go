//go:build cuda && cgo

package kernels

// The thin cgo layer over cuBLAS and cuSOLVER: each function checks every
// status it gets and reports the first failure as (library, status, call), so
// the Go side can name it. Device pointers travel as CUdeviceptr integers and
// are cast here, away from Go's pointer rules. Every call runs on the legacy
// default stream, so it is ordered with the driver's memory copies.

/*
#cgo CFLAGS: -I/usr/local/cuda/include
#cgo LDFLAGS: -L/usr/local/cuda/lib64 -lcusolver -lcublas -lcuda
#include <stdlib.h>
#include <cuda.h>
#include <cublas_v2.h>
#include <cusolverDn.h>

typedef struct {
	int lib;          // 0 ok, 1 CUDA driver, 2 cuBLAS, 3 cuSOLVER
	int status;
	const char *call;
} rz_status;

static rz_status rz_ok(void) { rz_status s = {0, 0, 0}; return s; }
static rz_status rz_fail(int lib, int status, const char *call) { rz_status s = {lib, status, call}; return s; }

#define RZ_CU(name, x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) return rz_fail(1, (int)r_, name); } while (0)
#define RZ_BLAS(name, x) do { cublasStatus_t r_ = (x); if (r_ != CUBLAS_STATUS_SUCCESS) return rz_fail(2, (int)r_, name); } while (0)
#define RZ_SOLVER(name, x) do { cusolverStatus_t r_ = (x); if (r_ != CUSOLVER_STATUS_SUCCESS) return rz_fail(3, (int)r_, name); } while (0)

static const char *rz_cu_name(int r) {
	const char *s = 0;
	if (cuGetErrorName((CUresult)r, &s) != CUDA_SUCCESS || s == 0) return "CUDA_ERROR_UNKNOWN";
	return s;
}

static rz_status rz_create(cublasHandle_t *blas, cusolverDnHandle_t *solver, cusolverDnParams_t *params) {
	RZ_BLAS("cublasCreate", cublasCreate(blas));
	// The default math mode: no TF32 for float32 products (bit-for-bit the
	// same kind of rounding as a CPU BLAS), unless NVIDIA_TF32_OVERRIDE asks.
	RZ_BLAS("cublasSetMathMode", cublasSetMathMode(*blas, CUBLAS_DEFAULT_MATH));
	RZ_SOLVER("cusolverDnCreate", cusolverDnCreate(solver));
	RZ_SOLVER("cusolverDnCreateParams", cusolverDnCreateParams(params));
	return rz_ok();
}

static cublasOperation_t rz_op(int t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

static rz_status rz_sgemm(cublasHandle_t h, int ta, int tb, int m, int n, int k, float alpha,
		CUdeviceptr a, int lda, CUdeviceptr b, int ldb, float beta, CUdeviceptr c, int ldc) {
	RZ_BLAS("cublasSgemm", cublasSgemm(h, rz_op(ta), rz_op(tb), m, n, k, &alpha,
		(const float *)a, lda, (const float *)b, ldb, &beta, (float *)c, ldc));
	return rz_ok();
}

static rz_status rz_dgemm(cublasHandle_t h, int ta, int tb, int m, int n, int k, double alpha,
		CUdeviceptr a, int lda, CUdeviceptr b, int ldb, double beta, CUdeviceptr c, int ldc) {
	RZ_BLAS("cublasDgemm", cublasDgemm(h, rz_op(ta), rz_op(tb), m, n, k, &alpha,
		(const double *)a, lda, (const double *)b, ldb, &beta, (double *)c, ldc));
	return rz_ok();
}

// rz_dsyrk: C (n×n, lower triangle, column-major) += A Aᵀ for the n×k A.
static rz_status rz_dsyrk(cublasHandle_t h, int n, int k, CUdeviceptr a, int lda, CUdeviceptr c, int ldc) {
	double one = 1;
	RZ_BLAS("cublasDsyrk", cublasDsyrk(h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, k, &one,
		(const double *)a, lda, &one, (double *)c, ldc));
	return rz_ok();
}

// rz_dtranspose: B (n×m) = Aᵀ for the column-major m×n A.
static rz_status rz_dtranspose(cublasHandle_t h, int m, int n, CUdeviceptr a, int lda, CUdeviceptr b, int ldb) {
	double one = 1, zero = 0;
	RZ_BLAS("cublasDgeam", cublasDgeam(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, &one, (const double *)a, lda,
		&zero, (const double *)b, ldb, (double *)b, ldb));
	return rz_ok();
}

// rz_orth_error: ‖QᵀQ − I‖_F for the column-major m×p Q, using g (p×p) and
// ones (p values of 1) as scratch.
static rz_status rz_orth_error(cublasHandle_t h, int m, int p, CUdeviceptr q, int ldq, CUdeviceptr g,
		CUdeviceptr ones, double *out) {
	double one = 1, zero = 0, minus = -1;
	RZ_BLAS("cublasDgemm", cublasDgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, p, p, m, &one, (const double *)q, ldq,
		(const double *)q, ldq, &zero, (double *)g, p));
	RZ_BLAS("cublasDaxpy", cublasDaxpy(h, p, &minus, (const double *)ones, 1, (double *)g, p + 1));
	RZ_BLAS("cublasDnrm2", cublasDnrm2(h, p * p, (const double *)g, 1, out));
	return rz_ok();
}

static rz_status rz_alloc(CUdeviceptr *p, size_t bytes) {
	RZ_CU("cuMemAlloc", cuMemAlloc(p, bytes > 0 ? bytes : 1));
	return rz_ok();
}

// rz_info reads a solver's devInfo.
static rz_status rz_info(CUdeviceptr dinfo, int *info) {
	RZ_CU("cuMemcpyDtoH", cuMemcpyDtoH(info, dinfo, sizeof(int)));
	return rz_ok();
}

// rz_potrf factors the column-major n×n A (lower triangle read) as L Lᵀ,
// writing L over A's lower triangle.
static rz_status rz_potrf(cusolverDnHandle_t h, int n, CUdeviceptr a, int lda, int *info) {
	int lwork = 0;
	RZ_SOLVER("cusolverDnDpotrf_bufferSize", cusolverDnDpotrf_bufferSize(h, CUBLAS_FILL_MODE_LOWER, n, (double *)a, lda, &lwork));
	CUdeviceptr work = 0, dinfo = 0;
	rz_status s = rz_alloc(&work, (size_t)lwork * sizeof(double));
	if (s.lib == 0) s = rz_alloc(&dinfo, sizeof(int));
	if (s.lib == 0) {
		cusolverStatus_t r = cusolverDnDpotrf(h, CUBLAS_FILL_MODE_LOWER, n, (double *)a, lda, (double *)work, lwork, (int *)dinfo);
		s = r == CUSOLVER_STATUS_SUCCESS ? rz_info(dinfo, info) : rz_fail(3, (int)r, "cusolverDnDpotrf");
	}
	if (work) cuMemFree(work);
	if (dinfo) cuMemFree(dinfo);
	return s;
}

// rz_syevd: eigenvalues (ascending) into w and eigenvectors over the
// column-major n×n A, reading A's lower triangle.
static rz_status rz_syevd(cusolverDnHandle_t h, int n, CUdeviceptr a, int lda, CUdeviceptr w, int *info) {
	int lwork = 0;
	RZ_SOLVER("cusolverDnDsyevd_bufferSize", cusolverDnDsyevd_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
		n, (const double *)a, lda, (const double *)w, &lwork));
	CUdeviceptr work = 0, dinfo = 0;
	rz_status s = rz_alloc(&work, (size_t)lwork * sizeof(double));
	if (s.lib == 0) s = rz_alloc(&dinfo, sizeof(int));
	if (s.lib == 0) {
		cusolverStatus_t r = cusolverDnDsyevd(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, (double *)a, lda,
			(double *)w, (double *)work, lwork, (int *)dinfo);
		s = r == CUSOLVER_STATUS_SUCCESS ? rz_info(dinfo, info) : rz_fail(3, (int)r, "cusolverDnDsyevd");
	}
	if (work) cuMemFree(work);
	if (dinfo) cuMemFree(dinfo);
	return s;
}

// rz_gesvd: the thin SVD of the column-major m×n A (m ≥ n, destroyed): U
// (m×n, ld m), s and Vᵀ (n×n, ld n).
static rz_status rz_gesvd(cusolverDnHandle_t h, int m, int n, CUdeviceptr a, int lda, CUdeviceptr s,
		CUdeviceptr u, CUdeviceptr vt, int *info) {
	int lwork = 0;
	RZ_SOLVER("cusolverDnDgesvd_bufferSize", cusolverDnDgesvd_bufferSize(h, m, n, &lwork));
	CUdeviceptr work = 0, dinfo = 0;
	rz_status st = rz_alloc(&work, (size_t)lwork * sizeof(double));
	if (st.lib == 0) st = rz_alloc(&dinfo, sizeof(int));
	if (st.lib == 0) {
		cusolverStatus_t r = cusolverDnDgesvd(h, 'S', 'S', m, n, (double *)a, lda, (double *)s, (double *)u, m,
			(double *)vt, n, (double *)work, lwork, 0, (int *)dinfo);
		st = r == CUSOLVER_STATUS_SUCCESS ? rz_info(dinfo, info) : rz_fail(3, (int)r, "cusolverDnDgesvd");
	}
	if (work) cuMemFree(work);
	if (dinfo) cuMemFree(dinfo);
	return st;
}

// rz_gesvda: the approximate (Gram-based) thin SVD of the column-major m×n A
// (m ≥ n, not modified): U (m×n, ld m), s, V (n×n, ld n) and the residual
// ‖A − U diag(s) Vᵀ‖_F.
static rz_status rz_gesvda(cusolverDnHandle_t h, int m, int n, CUdeviceptr a, int lda, CUdeviceptr s,
		CUdeviceptr u, CUdeviceptr v, int *info, double *resid) {
	int lwork = 0;
	long long sa = (long long)lda * n, su = (long long)m * n, sv = (long long)n * n;
	RZ_SOLVER("cusolverDnDgesvdaStridedBatched_bufferSize", cusolverDnDgesvdaStridedBatched_bufferSize(h,
		CUSOLVER_EIG_MODE_VECTOR, n, m, n, (const double *)a, lda, sa, (const double *)s, n, (const double *)u, m, su,
		(const double *)v, n, sv, &lwork, 1));
	CUdeviceptr work = 0, dinfo = 0;
	rz_status st = rz_alloc(&work, (size_t)lwork * sizeof(double));
	if (st.lib == 0) st = rz_alloc(&dinfo, sizeof(int));
	if (st.lib == 0) {
		cusolverStatus_t r = cusolverDnDgesvdaStridedBatched(h, CUSOLVER_EIG_MODE_VECTOR, n, m, n, (const double *)a, lda,
			sa, (double *)s, n, (double *)u, m, su, (double *)v, n, sv, (double *)work, lwork, (int *)dinfo, resid, 1);
		st = r == CUSOLVER_STATUS_SUCCESS ? rz_info(dinfo, info) : rz_fail(3, (int)r, "cusolverDnDgesvdaStridedBatched");
	}
	if (work) cuMemFree(work);
	if (dinfo) cuMemFree(dinfo);
	return st;
}

// rz_gesvdp: the SVD of the column-major m×n A (m ≥ n, destroyed) through
// the polar decomposition: U (m×n, ld m), s, V (n×n, ld n), and in
// err_sigma the perturbation added where a singular value is near zero.
static rz_status rz_gesvdp(cusolverDnHandle_t h, cusolverDnParams_t params, int m, int n, CUdeviceptr a,
		CUdeviceptr s, CUdeviceptr u, CUdeviceptr v, int *info, double *err_sigma) {
	size_t dbytes = 0, hbytes = 0;
	RZ_SOLVER("cusolverDnXgesvdp_bufferSize", cusolverDnXgesvdp_bufferSize(h, params, CUSOLVER_EIG_MODE_VECTOR, 1,
		m, n, CUDA_R_64F, (const void *)a, m, CUDA_R_64F, (const void *)s, CUDA_R_64F, (const void *)u, m,
		CUDA_R_64F, (const void *)v, n, CUDA_R_64F, &dbytes, &hbytes));
	CUdeviceptr work = 0, dinfo = 0;
	void *hwork = malloc(hbytes > 0 ? hbytes : 1);
	if (!hwork) return rz_fail(1, CUDA_ERROR_OUT_OF_MEMORY, "malloc (gesvdp host workspace)");
	rz_status st = rz_alloc(&work, dbytes);
	if (st.lib == 0) st = rz_alloc(&dinfo, sizeof(int));
	if (st.lib == 0) {
		cusolverStatus_t r = cusolverDnXgesvdp(h, params, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, CUDA_R_64F, (void *)a, m,
			CUDA_R_64F, (void *)s, CUDA_R_64F, (void *)u, m, CUDA_R_64F, (void *)v, n, CUDA_R_64F,
			(void *)work, dbytes, hwork, hbytes, (int *)dinfo, err_sigma);
		st = r == CUSOLVER_STATUS_SUCCESS ? rz_info(dinfo, info) : rz_fail(3, (int)r, "cusolverDnXgesvdp");
	}
	if (work) cuMemFree(work);
	if (dinfo) cuMemFree(dinfo);
	free(hwork);
	return st;
}

static rz_status rz_copy(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
	RZ_CU("cuMemcpyDtoD", cuMemcpyDtoD(dst, src, bytes));
	return rz_ok();
}

// rz_put and rz_get copy between host and device memory; pin registers the
// host range first (page-locked copies run at the link's full speed).
static rz_status rz_put(CUdeviceptr dst, void *src, size_t bytes, int pin) {
	int reg = pin && cuMemHostRegister(src, bytes, 0) == CUDA_SUCCESS;
	CUresult r = cuMemcpyHtoD(dst, src, bytes);
	if (reg) cuMemHostUnregister(src);
	if (r != CUDA_SUCCESS) return rz_fail(1, (int)r, "cuMemcpyHtoD");
	return rz_ok();
}

static rz_status rz_get(void *dst, CUdeviceptr src, size_t bytes, int pin) {
	int reg = pin && cuMemHostRegister(dst, bytes, 0) == CUDA_SUCCESS;
	CUresult r = cuMemcpyDtoH(dst, src, bytes);
	if (reg) cuMemHostUnregister(dst);
	if (r != CUDA_SUCCESS) return rz_fail(1, (int)r, "cuMemcpyDtoH");
	return rz_ok();
}
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"gorgonia.org/cu"
)

func isDeviceMemory(err error) bool { return errors.Is(err, ErrDeviceMemory) }

// cudaLibs holds the cuBLAS and cuSOLVER handles of the device's context.
type cudaLibs struct {
	blas   C.cublasHandle_t
	solver C.cusolverDnHandle_t
	params C.cusolverDnParams_t
}

func (l *cudaLibs) create() error { return statusErr(C.rz_create(&l.blas, &l.solver, &l.params)) }

func dp(p cu.DevicePtr) C.CUdeviceptr { return C.CUdeviceptr(p) }

func b2c(t bool) C.int {
	if t {
		return 1
	}
	return 0
}

func cudaAlloc(bytes int) (cu.DevicePtr, error) {
	var p C.CUdeviceptr
	if err := statusErr(C.rz_alloc(&p, C.size_t(bytes))); err != nil {
		return 0, err
	}
	return cu.DevicePtr(p), nil
}

// sgemm and dgemm are column-major BLAS calls.
func (l *cudaLibs) sgemm(tA, tB bool, m, n, k int, alpha float32, a cu.DevicePtr, lda int, b cu.DevicePtr, ldb int, beta float32, c cu.DevicePtr, ldc int) error {
	return statusErr(C.rz_sgemm(l.blas, b2c(tA), b2c(tB), C.int(m), C.int(n), C.int(k), C.float(alpha),
		dp(a), C.int(lda), dp(b), C.int(ldb), C.float(beta), dp(c), C.int(ldc)))
}

func (l *cudaLibs) dgemm(tA, tB bool, m, n, k int, alpha float64, a cu.DevicePtr, lda int, b cu.DevicePtr, ldb int, beta float64, c cu.DevicePtr, ldc int) error {
	return statusErr(C.rz_dgemm(l.blas, b2c(tA), b2c(tB), C.int(m), C.int(n), C.int(k), C.double(alpha),
		dp(a), C.int(lda), dp(b), C.int(ldb), C.double(beta), dp(c), C.int(ldc)))
}

// dsyrk adds A Aᵀ (A n×k, column-major) to C's lower triangle.
func (l *cudaLibs) dsyrk(n, k int, a cu.DevicePtr, lda int, c cu.DevicePtr, ldc int) error {
	return statusErr(C.rz_dsyrk(l.blas, C.int(n), C.int(k), dp(a), C.int(lda), dp(c), C.int(ldc)))
}

// transpose writes the n×m Aᵀ of the column-major m×n A into b.
func (l *cudaLibs) transpose(m, n int, a cu.DevicePtr, lda int, b cu.DevicePtr, ldb int) error {
	return statusErr(C.rz_dtranspose(l.blas, C.int(m), C.int(n), dp(a), C.int(lda), dp(b), C.int(ldb)))
}

// orthError returns ‖QᵀQ − I‖_F of the column-major m×p Q.
func (l *cudaLibs) orthError(m, p int, q cu.DevicePtr, ldq int, scratch, ones cu.DevicePtr) (float64, error) {
	var out C.double
	err := statusErr(C.rz_orth_error(l.blas, C.int(m), C.int(p), dp(q), C.int(ldq), dp(scratch), dp(ones), &out))
	return float64(out), err
}

func (l *cudaLibs) potrf(n int, a cu.DevicePtr, lda int) (info int, err error) {
	var ci C.int
	err = statusErr(C.rz_potrf(l.solver, C.int(n), dp(a), C.int(lda), &ci))
	return int(ci), err
}

func (l *cudaLibs) syevd(n int, a cu.DevicePtr, lda int, w cu.DevicePtr) (info int, err error) {
	var ci C.int
	err = statusErr(C.rz_syevd(l.solver, C.int(n), dp(a), C.int(lda), dp(w), &ci))
	return int(ci), err
}

// gesvd: U is m×n (ld m), vt is n×n (ld n); a (ld m) is destroyed.
func (l *cudaLibs) gesvd(m, n int, a, s, u, vt cu.DevicePtr) (info int, err error) {
	var ci C.int
	err = statusErr(C.rz_gesvd(l.solver, C.int(m), C.int(n), dp(a), C.int(m), dp(s), dp(u), dp(vt), &ci))
	return int(ci), err
}

// gesvda: U is m×n (ld m), v is n×n (ld n), resid is ‖A − UΣVᵀ‖_F.
func (l *cudaLibs) gesvda(m, n int, a, s, u, v cu.DevicePtr) (info int, resid float64, err error) {
	var ci C.int
	var r C.double
	err = statusErr(C.rz_gesvda(l.solver, C.int(m), C.int(n), dp(a), C.int(m), dp(s), dp(u), dp(v), &ci, &r))
	return int(ci), float64(r), err
}

// gesvdp: U is m×n (ld m), v is n×n (ld n); a is destroyed; errSigma is
// the perturbation added to singular values near zero.
func (l *cudaLibs) gesvdp(m, n int, a, s, u, v cu.DevicePtr) (info int, errSigma float64, err error) {
	var ci C.int
	var e C.double
	err = statusErr(C.rz_gesvdp(l.solver, l.params, C.int(m), C.int(n), dp(a), dp(s), dp(u), dp(v), &ci, &e))
	return int(ci), float64(e), err
}

func cudaCopy(dst, src cu.DevicePtr, bytes int) error {
	return statusErr(C.rz_copy(dp(dst), dp(src), C.size_t(bytes)))
}

// cudaPinMin is the smallest copy that registers its host memory first.
// Measured on the H200 for 128 MiB (TestCUDACopyTable): pageable 9.6 GB/s up
// and 16.8 down, registered per call 16.2 both ways (registering costs
// most of what the page-locked link speed of 54 GB/s would give; a reused
// pinned pool is the way to that).
const cudaPinMin = 8 << 20

// cudaPin turns the registration of large copies on; the timing table
// compares both.
var cudaPin = true

// hostCopy moves bytes between the host memory at p (pinned for Go's
// rules, since the driver holds it during the registration) and dev.
func hostCopy(up bool, dev cu.DevicePtr, p unsafe.Pointer, bytes int) error {
	if bytes == 0 {
		return nil
	}
	var pin runtime.Pinner
	pin.Pin(p)
	defer pin.Unpin()
	reg := C.int(0)
	if cudaPin && bytes >= cudaPinMin {
		reg = 1
	}
	var err error
	if up {
		err = statusErr(C.rz_put(dp(dev), p, C.size_t(bytes), reg))
	} else {
		err = statusErr(C.rz_get(p, dp(dev), C.size_t(bytes), reg))
	}
	if err != nil {
		return fmt.Errorf("%w (%s)", err, mib(bytes))
	}
	return nil
}

var cublasStatusNames = map[int]string{
	1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
	8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
	14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
}

var cusolverStatusNames = map[int]string{
	1: "CUSOLVER_STATUS_NOT_INITIALIZED", 2: "CUSOLVER_STATUS_ALLOC_FAILED", 3: "CUSOLVER_STATUS_INVALID_VALUE",
	4: "CUSOLVER_STATUS_ARCH_MISMATCH", 5: "CUSOLVER_STATUS_MAPPING_ERROR", 6: "CUSOLVER_STATUS_EXECUTION_FAILED",
	7: "CUSOLVER_STATUS_INTERNAL_ERROR", 8: "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED", 9: "CUSOLVER_STATUS_NOT_SUPPORTED",
	10: "CUSOLVER_STATUS_ZERO_PIVOT", 11: "CUSOLVER_STATUS_INVALID_LICENSE", 31: "CUSOLVER_STATUS_INVALID_WORKSPACE",
}

// outOfMemory is true for CUDA_ERROR_OUT_OF_MEMORY, CUBLAS_STATUS_ALLOC_FAILED
// and CUSOLVER_STATUS_ALLOC_FAILED: the statuses that mean "too large".
func outOfMemory(s C.rz_status) bool {
	return (s.lib == 1 && s.status == C.CUDA_ERROR_OUT_OF_MEMORY) ||
		(s.lib == 2 && s.status == C.CUBLAS_STATUS_ALLOC_FAILED) ||
		(s.lib == 3 && s.status == C.CUSOLVER_STATUS_ALLOC_FAILED)
}

// err turns a status into an error naming the call and the status.
func statusErr(s C.rz_status) error {
	if s.lib == 0 {
		return nil
	}
	call := C.GoString(s.call)
	var name string
	switch s.lib {
	case 1:
		name = C.GoString(C.rz_cu_name(s.status))
	case 2:
		name = cublasStatusNames[int(s.status)]
	case 3:
		name = cusolverStatusNames[int(s.status)]
	}
	if name == "" {
		name = fmt.Sprintf("status %d", int(s.status))
	}
	err := fmt.Errorf("kernels: cuda: %s: %s", call, name)
	if outOfMemory(s) {
		return fmt.Errorf("%w: %w", ErrDeviceMemory, err)
	}
	return err
}
