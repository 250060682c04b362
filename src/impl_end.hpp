#endif  // MI_IMPLEMENTATION

// Internal macros do not leak into the includer.
#ifdef MI_DETAIL_UNDEF_LEAN_AND_MEAN
#undef WIN32_LEAN_AND_MEAN
#undef MI_DETAIL_UNDEF_LEAN_AND_MEAN
#endif
#ifdef MI_DETAIL_UNDEF_NOMINMAX
#undef NOMINMAX
#undef MI_DETAIL_UNDEF_NOMINMAX
#endif
