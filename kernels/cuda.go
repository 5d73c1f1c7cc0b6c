//go:build cuda && cgo

package kernels

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"unsafe"

	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/mat"
	"gorgonia.org/cu"
)

// CUDA runs on an NVIDIA GPU: cuBLAS for the products, cuSOLVER for the
// decompositions, the driver API (through gorgonia.org/cu) for the device,
// its memory and one PTX kernel (float32 to float64 for GramAdd). Each call
// copies its operands to the device and its result back, so the interface
// stays the host-memory one every backend has; the calls of one process are
// serialised on the device.
//
// Where device memory runs out, Sgemm, Dgemm and GramAdd (which return no
// error) run on OpenBLAS instead; the decompositions return an error wrapping
// ErrDeviceMemory that names the size needed and the memory free.
//
// SVD: cuSOLVER's gesvd (QR-based, as accurate as LAPACK) below
// cudaFastSVDMin; at and above it first gesvda (eigenvectors of the Gram
// matrix, fifteen times faster) then gesvdp (polar decomposition), each kept
// only when its result passes checks of orthonormality and residual (see
// fastSVD), else gesvd runs.
type CUDA struct{ d *cudaDevice }

var _ Backend = CUDA{}

func (CUDA) Name() string { return "cuda" }

// Device describes the GPU, e.g. "NVIDIA H200 (143 GB, driver 13000)".
func (c CUDA) Device() string { return c.d.desc }

// LastSVDPath names the cuSOLVER routine whose result the last SVD
// returned, for benchmarks and logs: "gesvda", "gesvdp" or "gesvd".
func (c CUDA) LastSVDPath() string {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	return c.d.lastSVD
}

const (
	// cudaFastSVDMin is the smallest min(m, n) at which SVD tries gesvda.
	cudaFastSVDMin = 1024
	// cudaFastSVDTol bounds gesvda's relative residual ‖A − UΣVᵀ‖/‖A‖ and
	// ‖UᵀU − I‖/√p for its result to be used.
	cudaFastSVDTol = 1e-10
	// cudaGramRows is how many rows of X GramAdd sends per syrk.
	cudaGramRows = 4096
)

type cudaDevice struct {
	mu    sync.Mutex
	ctx   cu.CUContext
	desc  string
	lib   cudaLibs
	widen cu.Function // float32 → float64, elementwise
	// lastSVD is the solver the last SVD kept: "gesvda", "gesvdp" or "gesvd".
	lastSVD string
	// allocLimit, when positive, makes larger allocations fail as if the
	// device were full: the tests' way to reach the out-of-memory paths.
	allocLimit int
}

var (
	cudaOnce sync.Once
	cudaDev  *cudaDevice
	cudaErr  error
)

// OpenCUDA returns the CUDA backend on the first GPU, or an error saying why
// there is none (no driver, no device, a library that fails to start).
func OpenCUDA() (CUDA, error) {
	cudaOnce.Do(func() { cudaDev, cudaErr = openCUDA() })
	if cudaErr != nil {
		return CUDA{}, cudaErr
	}
	return CUDA{cudaDev}, nil
}

func openCUDA() (*cudaDevice, error) {
	if err := cu.InitError(); err != nil {
		return nil, fmt.Errorf("kernels: cuda: %w", err)
	}
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("kernels: cuda: cuDeviceGetCount: %w", err)
	}
	if n == 0 {
		return nil, fmt.Errorf("kernels: cuda: no CUDA device")
	}
	dev, err := cu.GetDevice(0)
	if err != nil {
		return nil, fmt.Errorf("kernels: cuda: cuDeviceGet: %w", err)
	}
	name, _ := dev.Name()
	total, _ := dev.TotalMem()
	d := &cudaDevice{desc: fmt.Sprintf("%s (%.0f GB, driver %d)", name, float64(total)/1e9, cu.Version())}
	if d.ctx, err = dev.RetainPrimaryCtx(); err != nil {
		return nil, fmt.Errorf("kernels: cuda: cuDevicePrimaryCtxRetain: %w", err)
	}
	err = d.do(func() error {
		if err := d.lib.create(); err != nil {
			return err
		}
		mod, err := cu.LoadData(widenPTX)
		if err != nil {
			return fmt.Errorf("kernels: cuda: cuModuleLoadData (widen kernel): %w", err)
		}
		if d.widen, err = mod.Function("widen"); err != nil {
			return fmt.Errorf("kernels: cuda: cuModuleGetFunction widen: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// widenPTX converts n float32 values to float64: y[i] = x[i]. PTX is
// compiled by the driver on first load, for whatever GPU is there.
const widenPTX = `
.version 7.0
.target sm_52
.address_size 64
.visible .entry widen(.param .u64 dst, .param .u64 src, .param .u64 n)
{
	.reg .pred %p;
	.reg .b32 %r<4>;
	.reg .b64 %rd<10>;
	.reg .f32 %f;
	.reg .f64 %d;
	ld.param.u64 %rd1, [dst];
	ld.param.u64 %rd2, [src];
	ld.param.u64 %rd3, [n];
	mov.u32 %r1, %ctaid.x;
	mov.u32 %r2, %ntid.x;
	mov.u32 %r3, %tid.x;
	mul.wide.u32 %rd4, %r1, %r2;
	cvt.u64.u32 %rd5, %r3;
	add.u64 %rd4, %rd4, %rd5;
	setp.ge.u64 %p, %rd4, %rd3;
	@%p bra DONE;
	cvta.to.global.u64 %rd6, %rd2;
	shl.b64 %rd7, %rd4, 2;
	add.u64 %rd6, %rd6, %rd7;
	ld.global.f32 %f, [%rd6];
	cvt.f64.f32 %d, %f;
	cvta.to.global.u64 %rd8, %rd1;
	shl.b64 %rd7, %rd4, 3;
	add.u64 %rd8, %rd8, %rd7;
	st.global.f64 [%rd8], %d;
DONE:
	ret;
}
`

// do runs f with the device's context current on a locked OS thread, one
// call at a time (the handles are not safe for concurrent use).
func (d *cudaDevice) do(f func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cu.SetCurrentContext(d.ctx); err != nil {
		return fmt.Errorf("kernels: cuda: cuCtxSetCurrent: %w", err)
	}
	return f()
}

// mem is the device memory of one call, freed together.
type blasSym = blas64.Symmetric

type mem struct {
	ptrs  []cu.DevicePtr
	limit int // the device's allocLimit
}

// alloc returns bytes of device memory; running out is an error wrapping
// ErrDeviceMemory that names what was asked and what is free.
func (m *mem) alloc(bytes int, what string) (cu.DevicePtr, error) {
	p, err := cudaAlloc(bytes)
	if err == nil && m.limit > 0 && bytes > m.limit {
		cu.MemFree(p)
		p, err = 0, fmt.Errorf("%w: simulated (limit %s)", ErrDeviceMemory, mib(m.limit))
	}
	if err != nil {
		if isDeviceMemory(err) {
			free, total, _ := cu.MemInfo()
			return 0, fmt.Errorf("%w: %s needs %s, %s free of %s", err, what, mib(bytes), mib(int(free)), mib(int(total)))
		}
		return 0, err
	}
	m.ptrs = append(m.ptrs, p)
	return p, nil
}

func (m *mem) free() {
	for _, p := range m.ptrs {
		cu.MemFree(p)
	}
	m.ptrs = nil
}

func mib(bytes int) string { return fmt.Sprintf("%.1f MiB", float64(bytes)/(1<<20)) }

// Host↔device copies of float slices.
func put64(dst cu.DevicePtr, src []float64) error {
	if len(src) == 0 {
		return nil
	}
	return hostCopy(true, dst, unsafe.Pointer(&src[0]), len(src)*8)
}

func get64(dst []float64, src cu.DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	return hostCopy(false, src, unsafe.Pointer(&dst[0]), len(dst)*8)
}

func put32(dst cu.DevicePtr, src []float32) error {
	if len(src) == 0 {
		return nil
	}
	return hostCopy(true, dst, unsafe.Pointer(&src[0]), len(src)*4)
}

func get32(dst []float32, src cu.DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	return hostCopy(false, src, unsafe.Pointer(&dst[0]), len(dst)*4)
}

// span is the length of the storage of a rows×cols matrix with row stride ld.
func span(rows, cols, ld int) int {
	if rows == 0 || cols == 0 {
		return 0
	}
	return (rows-1)*ld + cols
}

// fallback runs a product that found no room on the device on OpenBLAS,
// and panics on any other device failure: those methods return no error,
// and a failing device is no state to go on computing in.
func fallback(err error, cpu func()) {
	if err == nil {
		return
	}
	if isDeviceMemory(err) {
		cpu()
		return
	}
	panic(err)
}

func (c CUDA) Sgemm(tA, tB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, cm []float32, ldc int) {
	checkGemm32(tA, tB, m, n, k, a, lda, b, ldb, cm, ldc)
	if m == 0 || n == 0 {
		return
	}
	if alpha == 0 || k == 0 {
		scale32(m, n, beta, cm, ldc)
		return
	}
	ar, ac := m, k
	if tA {
		ar, ac = k, m
	}
	br, bc := k, n
	if tB {
		br, bc = n, k
	}
	as, bs, cs := span(ar, ac, lda), span(br, bc, ldb), span(m, n, ldc)
	err := c.d.do(func() error {
		g := mem{limit: c.d.allocLimit}
		defer g.free()
		da, err := g.alloc(as*4, "Sgemm A")
		if err != nil {
			return err
		}
		db, err := g.alloc(bs*4, "Sgemm B")
		if err != nil {
			return err
		}
		dc, err := g.alloc(cs*4, "Sgemm C")
		if err != nil {
			return err
		}
		if err := put32(da, a[:as]); err != nil {
			return err
		}
		if err := put32(db, b[:bs]); err != nil {
			return err
		}
		// C's padding between rows goes up and comes back unchanged; with
		// beta = 0 and no padding C need not go up at all.
		if beta != 0 || ldc != n {
			if err := put32(dc, cm[:cs]); err != nil {
				return err
			}
		}
		// Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ.
		if err := c.d.lib.sgemm(tB, tA, n, m, k, alpha, db, ldb, da, lda, beta, dc, ldc); err != nil {
			return err
		}
		return get32(cm[:cs], dc)
	})
	fallback(err, func() { OpenBLAS{}.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, cm, ldc) })
}

func (c CUDA) Dgemm(tA, tB bool, alpha float64, a, b *mat.Dense, beta float64, cm *mat.Dense) {
	m, n, k := gemm64Dims(tA, tB, a, b, cm)
	if m == 0 || n == 0 {
		return
	}
	if alpha == 0 || k == 0 {
		scale64(beta, cm)
		return
	}
	ra, rb, rc := a.RawMatrix(), b.RawMatrix(), cm.RawMatrix()
	as, bs, cs := span(ra.Rows, ra.Cols, ra.Stride), span(rb.Rows, rb.Cols, rb.Stride), span(rc.Rows, rc.Cols, rc.Stride)
	err := c.d.do(func() error {
		g := mem{limit: c.d.allocLimit}
		defer g.free()
		da, err := g.alloc(as*8, "Dgemm A")
		if err != nil {
			return err
		}
		db, err := g.alloc(bs*8, "Dgemm B")
		if err != nil {
			return err
		}
		dc, err := g.alloc(cs*8, "Dgemm C")
		if err != nil {
			return err
		}
		if err := put64(da, ra.Data[:as]); err != nil {
			return err
		}
		if err := put64(db, rb.Data[:bs]); err != nil {
			return err
		}
		if beta != 0 || rc.Stride != n {
			if err := put64(dc, rc.Data[:cs]); err != nil {
				return err
			}
		}
		if err := c.d.lib.dgemm(tB, tA, n, m, k, alpha, db, rb.Stride, da, ra.Stride, beta, dc, rc.Stride); err != nil {
			return err
		}
		return get64(rc.Data[:cs], dc)
	})
	fallback(err, func() { OpenBLAS{}.Dgemm(tA, tB, alpha, a, b, beta, cm) })
}

// GramAdd sends X up in chunks of rows, widens each to float64 on the
// device and adds its XᵀX with one syrk, so the sum is float64 throughout,
// as on the CPU. C goes up once and comes back once.
func (c CUDA) GramAdd(cm *mat.SymDense, x []float32, rows, cols int) {
	checkGram(cm, x, rows, cols)
	if rows == 0 || cols == 0 {
		return
	}
	rc := cm.RawSymmetric()
	cs := span(cols, cols, rc.Stride)
	chunk := min(rows, cudaGramRows)
	err := c.d.do(func() error {
		g := mem{limit: c.d.allocLimit}
		defer g.free()
		dc, err := g.alloc(cs*8, "GramAdd C")
		if err != nil {
			return err
		}
		d32, err := g.alloc(chunk*cols*4, "GramAdd X (float32)")
		if err != nil {
			return err
		}
		d64, err := g.alloc(chunk*cols*8, "GramAdd X (float64)")
		if err != nil {
			return err
		}
		if err := put64(dc, rc.Data[:cs]); err != nil {
			return err
		}
		for r0 := 0; r0 < rows; r0 += chunk {
			kr := min(chunk, rows-r0)
			nv := kr * cols
			if err := put32(d32, x[r0*cols:r0*cols+nv]); err != nil {
				return err
			}
			if err := c.d.widenOn(d64, d32, nv); err != nil {
				return err
			}
			// Row-major X (kr×cols) is column-major Xᵀ; gonum's upper
			// triangle is column-major's lower one.
			if err := c.d.lib.dsyrk(cols, kr, d64, cols, dc, rc.Stride); err != nil {
				return err
			}
		}
		return get64(rc.Data[:cs], dc)
	})
	fallback(err, func() { OpenBLAS{}.GramAdd(cm, x, rows, cols) })
}

// widenOn runs the widen kernel over n values.
func (d *cudaDevice) widenOn(dst, src cu.DevicePtr, n int) error {
	const block = 256
	nn := uint64(n)
	args := []unsafe.Pointer{unsafe.Pointer(&dst), unsafe.Pointer(&src), unsafe.Pointer(&nn)}
	if err := d.widen.Launch((n+block-1)/block, 1, 1, block, 1, 1, 0, cu.NoStream, args); err != nil {
		return fmt.Errorf("kernels: cuda: cuLaunchKernel widen: %w", err)
	}
	return nil
}

// putUpper sends gonum's upper triangle of a as it lies, which is the
// column-major lower triangle: the one the solvers are told to read. A
// strided a is packed into scratch (n×n) first.
func putUpper(dst cu.DevicePtr, raw blasSym, scratch []float64) error {
	n := raw.N
	if raw.Stride == n {
		return put64(dst, raw.Data[:n*n])
	}
	for i := range n {
		copy(scratch[i*n+i:(i+1)*n], raw.Data[i*raw.Stride+i:i*raw.Stride+n])
	}
	return put64(dst, scratch)
}

func (c CUDA) Cholesky(a *mat.SymDense) (*mat.TriDense, error) {
	n := a.SymmetricDim()
	if n == 0 {
		return &mat.TriDense{}, nil
	}
	checkDecomp(n, n)
	raw := a.RawSymmetric()
	if !upperFinite(raw) {
		return nil, ErrNonFinite
	}
	l := make([]float64, n*n)
	var info int
	err := c.d.do(func() error {
		g := mem{limit: c.d.allocLimit}
		defer g.free()
		what := fmt.Sprintf("Cholesky of %d×%d", n, n)
		da, err := g.alloc(n*n*8, what)
		if err != nil {
			return err
		}
		dt, err := g.alloc(n*n*8, what)
		if err != nil {
			return err
		}
		if err := putUpper(da, raw, l); err != nil {
			return err
		}
		if info, err = c.d.lib.potrf(n, da, n); err != nil || info != 0 {
			return err
		}
		// The column-major lower L, read row-major, would be Lᵀ.
		if err := c.d.lib.transpose(n, n, da, n, dt, n); err != nil {
			return err
		}
		return get64(l, dt)
	})
	if err != nil {
		return nil, err
	}
	if info > 0 {
		return nil, ErrNotPSD
	}
	if info < 0 {
		panic(fmt.Sprintf("kernels: cusolverDnDpotrf rejected argument %d", -info))
	}
	for i := range n {
		clear(l[i*n+i+1 : (i+1)*n]) // potrf leaves A's other triangle there
	}
	return mat.NewTriDense(n, mat.Lower, l), nil
}

func (c CUDA) Eigh(a *mat.SymDense) ([]float64, *mat.Dense, error) {
	n := a.SymmetricDim()
	if n == 0 {
		return []float64{}, &mat.Dense{}, nil
	}
	checkDecomp(n, n)
	raw := a.RawSymmetric()
	if !upperFinite(raw) {
		return nil, nil, ErrNonFinite
	}
	v := make([]float64, n*n)
	w := make([]float64, n)
	var info int
	err := c.d.do(func() error {
		g := mem{limit: c.d.allocLimit}
		defer g.free()
		what := fmt.Sprintf("Eigh of %d×%d", n, n)
		da, err := g.alloc(n*n*8, what)
		if err != nil {
			return err
		}
		dt, err := g.alloc(n*n*8, what)
		if err != nil {
			return err
		}
		dw, err := g.alloc(n*8, what)
		if err != nil {
			return err
		}
		if err := putUpper(da, raw, v); err != nil {
			return err
		}
		if info, err = c.d.lib.syevd(n, da, n, dw); err != nil || info != 0 {
			return err
		}
		// Column-major eigenvectors are row-major's rows: transpose.
		if err := c.d.lib.transpose(n, n, da, n, dt, n); err != nil {
			return err
		}
		if err := get64(w, dw); err != nil {
			return err
		}
		return get64(v, dt)
	})
	if err != nil {
		return nil, nil, err
	}
	if info > 0 {
		return nil, nil, ErrNoConvergence
	}
	if info < 0 {
		panic(fmt.Sprintf("kernels: cusolverDnDsyevd rejected argument %d", -info))
	}
	return w, mat.NewDense(n, n, v), nil
}

// SVD works on a column-major r×c matrix M with r ≥ c: Aᵀ itself (the
// row-major A as it lies) when A is square or wide, else A, transposed on
// the device. M = U_M Σ V_Mᵀ; for a wide A, U_A = V_M and Vᵀ_A = U_Mᵀ, for a
// tall one U_A = U_M and Vᵀ_A = V_Mᵀ. A column-major matrix read as
// row-major is its transpose, so each factor either comes back as it lies or
// is transposed on the device first.
//
// From min(m, n) = cudaFastSVDMin on, two fast solvers are tried before
// gesvd, each kept only if its result passes the checks of fastSVD.
func (c CUDA) SVD(a *mat.Dense) (*mat.Dense, []float64, *mat.Dense, error) {
	m, n := a.Dims()
	p := min(m, n)
	if p == 0 {
		return &mat.Dense{}, []float64{}, &mat.Dense{}, nil
	}
	checkDecomp(m, n)
	raw := a.RawMatrix()
	work := raw.Data[:m*n]
	if raw.Stride != n {
		work = denseCopy(a)
	}
	normA, finite := frobeniusFinite(work)
	if !finite {
		return nil, nil, nil, ErrNonFinite
	}
	s := make([]float64, p)
	u := make([]float64, m*p)
	vt := make([]float64, p*n)
	wide := n >= m
	r, cc := n, m // M's shape
	if !wide {
		r, cc = m, n
	}
	var info int
	err := c.d.do(func() error {
		g := mem{limit: c.d.allocLimit}
		defer g.free()
		what := fmt.Sprintf("SVD of %d×%d", m, n)
		buf := func(k int) (cu.DevicePtr, error) { return g.alloc(k*8, what) }
		dA, err := buf(m * n)
		if err != nil {
			return err
		}
		if err := put64(dA, work); err != nil {
			return err
		}
		dM := dA
		if !wide {
			if dM, err = buf(m * n); err != nil {
				return err
			}
			if err := c.d.lib.transpose(n, m, dA, n, dM, m); err != nil {
				return err
			}
		}
		dS, err := buf(p)
		if err != nil {
			return err
		}
		dU, err := buf(r * p)
		if err != nil {
			return err
		}
		dV, err := buf(cc * p) // V_M (cc×p) from the fast solvers, V_Mᵀ (p×cc) from gesvd
		if err != nil {
			return err
		}
		dT, err := buf(max(r, cc) * p)
		if err != nil {
			return err
		}
		vIsT := false
		c.d.lastSVD = ""
		if p >= cudaFastSVDMin && !math.IsInf(normA, 0) {
			if c.d.lastSVD, err = c.d.fastSVD(&g, r, cc, dM, dS, dU, dV, dT, normA); err != nil {
				return err
			}
		}
		if c.d.lastSVD == "" {
			c.d.lastSVD = "gesvd"
			vIsT = true
			if info, err = c.d.lib.gesvd(r, cc, dM, dS, dU, dV); err != nil || info != 0 {
				return err
			}
		}
		// fetch copies the column-major rows×cols src (leading dimension
		// rows) into the row-major dst of the same matrix's transpose
		// (asIs), or of the same matrix (transposing on the device).
		fetch := func(dst []float64, src cu.DevicePtr, rows, cols int, asIs bool) error {
			if !asIs {
				if err := c.d.lib.transpose(rows, cols, src, rows, dT, cols); err != nil {
					return err
				}
				src = dT
			}
			return get64(dst, src)
		}
		if err := get64(s, dS); err != nil {
			return err
		}
		if wide {
			// U_A (m×p) = V_M; Vᵀ_A (p×n) = U_Mᵀ, U_M lying as n×p.
			if vIsT {
				err = fetch(u, dV, p, m, true)
			} else {
				err = fetch(u, dV, m, p, false)
			}
			if err != nil {
				return err
			}
			return fetch(vt, dU, n, p, true)
		}
		// U_A (m×p) = U_M; Vᵀ_A (p×n) = V_Mᵀ.
		if err := fetch(u, dU, m, p, false); err != nil {
			return err
		}
		if vIsT {
			return fetch(vt, dV, p, n, false)
		}
		return fetch(vt, dV, n, p, true)
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if info > 0 {
		return nil, nil, nil, ErrNoConvergence
	}
	if info < 0 {
		panic(fmt.Sprintf("kernels: cusolverDnDgesvd rejected argument %d", -info))
	}
	return mat.NewDense(m, p, u), s, mat.NewDense(p, n, vt), nil
}

// fastSVD tries gesvda (eigenvectors of the Gram matrix: exact enough for
// well-conditioned M), then gesvdp (through the polar decomposition: exact
// unless singular values are near zero), on the column-major r×c M (r ≥ c,
// left intact). A result is kept when ‖UᵀU − I‖ and ‖VᵀV − I‖ are within
// cudaFastSVDTol·√c and, for gesvda, its residual within cudaFastSVDTol·‖M‖,
// for gesvdp the perturbation it added within cudaFastSVDTol·‖M‖. It
// returns the solver kept, or "" when gesvd must run.
func (d *cudaDevice) fastSVD(g *mem, r, c int, dM, dS, dU, dV, dT cu.DevicePtr, normA float64) (string, error) {
	ones := make([]float64, c)
	for i := range ones {
		ones[i] = 1
	}
	dOnes, err := g.alloc(c*8, "SVD check")
	if err != nil {
		return "", err
	}
	if err := put64(dOnes, ones); err != nil {
		return "", err
	}
	orthonormal := func() (bool, error) {
		for _, q := range []struct {
			p    cu.DevicePtr
			rows int
		}{{dU, r}, {dV, c}} {
			e, err := d.lib.orthError(q.rows, c, q.p, q.rows, dT, dOnes)
			if err != nil || !(e <= cudaFastSVDTol*math.Sqrt(float64(c))) {
				return false, err
			}
		}
		return true, nil
	}
	tol := cudaFastSVDTol * normA

	info, resid, err := d.lib.gesvda(r, c, dM, dS, dU, dV)
	if err != nil {
		return "", err
	}
	if info == 0 && resid <= tol {
		if ok, err := orthonormal(); ok || err != nil {
			return "gesvda", err
		}
	}

	// gesvdp destroys its input, and gesvd may still need M: a copy.
	dW, err := g.alloc(r*c*8, "SVD (gesvdp copy)")
	if err != nil {
		return "", err
	}
	if err := cudaCopy(dW, dM, r*c*8); err != nil {
		return "", err
	}
	info, errSigma, err := d.lib.gesvdp(r, c, dW, dS, dU, dV)
	if err != nil {
		return "", err
	}
	if info == 0 && errSigma <= tol {
		if ok, err := orthonormal(); ok || err != nil {
			return "gesvdp", err
		}
	}
	return "", nil
}

// upperFinite reports whether gonum's upper triangle holds no NaN or Inf.
func upperFinite(raw blasSym) bool {
	for i := range raw.N {
		for _, v := range raw.Data[i*raw.Stride+i : i*raw.Stride+raw.N] {
			if v-v != 0 {
				return false
			}
		}
	}
	return true
}

// frobeniusFinite returns ‖s‖ and whether s is all finite, in one pass
// (the sum is NaN or Inf exactly when an entry is, barring overflow, which
// the second pass tells apart).
func frobeniusFinite(s []float64) (float64, bool) {
	var sum float64
	for _, v := range s {
		sum += v * v
	}
	if sum-sum == 0 {
		return math.Sqrt(sum), true
	}
	return math.Inf(1), allFinite(s)
}
