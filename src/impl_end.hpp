// Internal macros do not leak into the includer: the Windows ones this header
// defined, and every MI_DETAIL_* except MI_DETAIL_IMPLEMENTATION_INCLUDED, which must
// outlive this inclusion so that a second one does not compile the implementation again.
// (tests/compile_check.py lists the macros the header leaves defined.)
#ifdef MI_DETAIL_UNDEF_LEAN_AND_MEAN
#undef WIN32_LEAN_AND_MEAN
#undef MI_DETAIL_UNDEF_LEAN_AND_MEAN
#endif
#ifdef MI_DETAIL_UNDEF_NOMINMAX
#undef NOMINMAX
#undef MI_DETAIL_UNDEF_NOMINMAX
#endif
#undef MI_DETAIL_EXCEPTIONS
#undef MI_DETAIL_CPLUSPLUS
#undef MI_DETAIL_WINDOWS
#undef MI_DETAIL_CURL
#undef MI_DETAIL_CURL_LINKED
#undef MI_DETAIL_NOINLINE
#undef MI_DETAIL_COLD
