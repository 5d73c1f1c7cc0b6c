// compat.h: rankzip's patch to gorgonia.org/cu v0.9.6 so that it builds
// against CUDA 13 headers as well as 10.x-12.x ones. CUDA 13 changed the
// signatures behind five driver API names (a create-params argument for
// cuCtxCreate, a CUmemLocation for cuMemAdvise/cuMemPrefetchAsync, edge data
// for the graph edge calls); these shims keep the old signatures on every
// version. See PATCHES.md.
#ifndef CU_COMPAT_H
#define CU_COMPAT_H
#include <cuda.h>

#if CUDA_VERSION >= 13000
static inline CUmemLocation cuCompatLocation(CUdevice d) {
	CUmemLocation loc;
	if (d == CU_DEVICE_CPU) {
		loc.type = CU_MEM_LOCATION_TYPE_HOST;
		loc.id = 0;
	} else {
		loc.type = CU_MEM_LOCATION_TYPE_DEVICE;
		loc.id = d;
	}
	return loc;
}
static inline CUresult cuCompatCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev) {
	return cuCtxCreate(pctx, NULL, flags, dev);
}
static inline CUresult cuCompatMemAdvise(CUdeviceptr p, size_t n, CUmem_advise advice, CUdevice d) {
	return cuMemAdvise(p, n, advice, cuCompatLocation(d));
}
static inline CUresult cuCompatMemPrefetchAsync(CUdeviceptr p, size_t n, CUdevice d, CUstream s) {
	return cuMemPrefetchAsync(p, n, cuCompatLocation(d), 0, s);
}
static inline CUresult cuCompatGraphAddDependencies(CUgraph g, const CUgraphNode *from, const CUgraphNode *to, size_t n) {
	return cuGraphAddDependencies(g, from, to, NULL, n);
}
static inline CUresult cuCompatGraphGetEdges(CUgraph g, CUgraphNode *from, CUgraphNode *to, size_t *n) {
	return cuGraphGetEdges(g, from, to, NULL, n);
}
#else
#define cuCompatCtxCreate cuCtxCreate
#define cuCompatMemAdvise cuMemAdvise
#define cuCompatMemPrefetchAsync cuMemPrefetchAsync
#define cuCompatGraphAddDependencies cuGraphAddDependencies
#define cuCompatGraphGetEdges cuGraphGetEdges
#endif

#endif
