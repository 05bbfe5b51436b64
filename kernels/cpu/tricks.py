"""Tricks: how these kernels get LLVM to generate the code they need, and why each is needed.

Numba compiles Python to LLVM IR and lets LLVM optimise it. For these kernels LLVM's defaults are
not enough: a handful of patterns decide whether a loop runs at 16 floats per instruction or at
one, and whether a tile's accumulators stay in registers. Each trick below is load-bearing (the
numbers are from the 2-core AVX-512 machine the kernels were tuned on).

1. **Stack arrays** (:func:`_stack_floats`). The GEMM micro-kernel keeps its 4 x NR partial sums
   in CPU registers for the whole k loop. LLVM does that for a small array on the stack indexed
   only by loop counters of compile-time trip count, never for a heap array (``np.empty``). So
   the accumulators are ``numba.carray(_stack_floats(NR), NR)``.

2. **No reference counting in the hot loops** (:func:`_borrowed`). Numba increments and
   decrements an array's reference count for every slice taken of it: an atomic add on one cache
   line, which two threads slicing the same workspace pass back and forth. The kernels slice
   borrowed views (no reference count) of the arrays their caller keeps alive instead.

3. **Raw pointers as arguments** (:func:`_at`). The micro-kernel is a function of its own (see
   ``micro_kernel.py``) called once per tile, and a call costs in proportion to its arguments:
   Numba passes an array as a struct of 7-9 machine words. A raw pointer is one word (18 arguments
   instead of ~46), which made the narrow layers' GEMM steps, where a tile is only 100-200 FMAs, up
   to 1.5x faster.

4. **Unsigned or loop-counter indices.** Numba wraps a negative index around (``i + len`` if
   ``i < 0``): for a computed signed index ``row[offset + c]`` that is a select per element, which
   stops LLVM from vectorising the loop. So every array in a vectorised loop is indexed by the
   loop counter alone (``row[c]`` of a slice ``row = ws[a:b]``), by an *unsigned* index
   (``np.uint64``, which Numba never wraps), or is a raw pointer.

5. **Contraction, not full fastmath** (:data:`FASTMATH`). Fused multiply-add is allowed,
   reassociation is not. With ``fastmath=True`` LLVM may vectorise the GEMM's k loop as a
   reduction and gather the weights instead, which is 20x slower; and the results would depend on
   LLVM's choices.

6. **Each kernel compiled on its own, called by address** (:func:`_caller`). Numba compiles a
   caller together with the LLVM code of everything it calls, and optimises it all again; kernels
   nested four deep were optimised four times over (~45 s of compiling, now ~18 s). So each kernel
   is compiled for fixed argument types and called through its address, which travels as data
   (the int64 array ``fns``, see ``driver.py``): the caller's machine code holds an indirect call,
   not a copy of the kernel.

7. **The SLP vectoriser** (``driver.compile_settings``). LLVM's SLP vectoriser, which Numba leaves
   off by default, is what turns the micro-kernels' epilogues (fully unrolled loops over a tile's
   accumulators: bias, ReLU, residual, interleaved stores) into vector instructions; without it
   they run one float at a time (5-15 % of a GEMM). It is switched on only while our kernels
   compile.

8. **512-bit vectors on Intel too** (:func:`_wide_vectors`). For Intel's server CPUs (Skylake-X
   to Emerald Rapids) LLVM's tuning *prefers* 256-bit vectors even where AVX-512 is there (a
   guard against the clock drop some older chips took on 512-bit code); for AMD's Zen 4 / 5 it
   prefers 512. With 256-bit vectors a 4 x 64 micro-tile needs 32 accumulator registers instead
   of 16 and spills: on an Emerald Rapids machine the micro-kernel ran at 45 GFLOP/s on a core
   against 77-89 with 512-bit vectors (the same code, the same numbers). Every kernel function
   starts with ``_wide_vectors()``, which sets LLVM's per-function ``"prefer-vector-width"="512"``
   attribute on it: the choice then no longer depends on whose CPU it is, nothing global changes,
   and on a CPU without AVX-512 the attribute has no effect (the widest legal vector stays 256).
"""

from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

FASTMATH = {"contract"}  # fused multiply-add yes, reassociation no (trick 5)


@intrinsic
def _wide_vectors(typingctx):
    """Trick 8: let LLVM vectorise the function this is called in with 512-bit vectors, whatever
    its tuning for this CPU prefers (a per-function attribute; call it first in the function)."""

    def codegen(context, builder, signature, args):
        # llvmlite's attribute set takes only a fixed list of names, so the string attribute is
        # added to the underlying set directly; it is written verbatim into the function's IR
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _stack_floats(typingctx, count):
    """A pointer to ``count`` float32 on the stack (``count`` must be a literal integer).

    Wrapped with ``numba.carray`` it is a small array that LLVM can keep entirely in registers,
    which a heap array (``np.empty``) never is.
    """
    if not isinstance(count, types.IntegerLiteral):
        return None
    n = count.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=n)

    return types.CPointer(types.float32)(count), codegen


@intrinsic
def _borrowed(typingctx, array):
    """``array`` without reference counting (its meminfo set to NULL), for use inside one call.

    Numba increments and decrements an array's reference count for every slice taken of it: an
    atomic add on one cache line, which two threads slicing the same workspace pass back and
    forth. The kernels slice borrowed views of arrays their caller keeps alive instead. (Never of
    an array the kernel allocates itself: Numba frees it as soon as its last counted reference
    dies, which may be right after this call.)
    """
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, value=args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return array(array), codegen


@intrinsic
def _at(typingctx, array, index):
    """A raw pointer to ``array[index]`` of a contiguous 1-D array (no bounds check, no reference
    count): one machine word to pass to the micro-kernel instead of the array's 7-field struct."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, value=args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        return builder.gep(view.data, [index])

    return types.CPointer(array.dtype)(array, index), codegen


def _caller(argtypes: tuple):
    """An intrinsic ``call(address, *args)``: call the kernel at ``address`` (an int64 from
    ``driver.kernel_table``), which Numba compiled for the argument types ``argtypes`` (trick 6).

    Arguments that do not convert to exactly those types are a typing error at compile time (a
    call with any other layout would read garbage). The call uses Numba's own calling convention,
    so an exception raised in the kernel propagates to the caller as from a direct call.
    """

    @intrinsic
    def call(typingctx, address, *args):
        if len(args) == 1 and isinstance(args[0], types.StarArgTuple):
            args = tuple(args[0].types)
        if not (isinstance(address, types.Integer) and len(args) == len(argtypes)
                and all(typingctx.can_convert(a, b) for a, b in zip(args, argtypes, strict=True))):
            return None

        def codegen(context, builder, signature, llargs):
            fnty = context.call_conv.get_function_type(types.none, argtypes)
            fn = builder.inttoptr(llargs[0], fnty.as_pointer())
            given = cgutils.unpack_tuple(builder, llargs[1], len(args))
            values = [context.cast(builder, v, a, b) for v, a, b in zip(given, args, argtypes, strict=True)]
            status, _ = context.call_conv.call_function(builder, fn, types.none, argtypes, values)
            with cgutils.if_unlikely(builder, status.is_error):
                context.call_conv.return_status_propagate(builder, status)
            return context.get_dummy_value()

        return types.none(address, types.StarArgTuple(args)), codegen

    return call


