// oneDNN convolutions with their element-wise epilogue fused (libtorch's
// `mkldnn::_convolution_pointwise` family, the kernels torch.compile's CPU backend calls), which
// tch does not bind. Called from fused.rs through the dispatcher (the ops' C++ declarations are
// not among the wheel's headers); C++ exceptions are caught here and returned as a message
// (freed with vae_model_free_error).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

c10::IValue optional_tensor(const at::Tensor *t) { return t ? c10::IValue(*t) : c10::IValue(); }

c10::IValue pair(const int64_t *v) { return c10::IValue(std::vector<int64_t>{v[0], v[1]}); }

c10::IValue no_scalars() { return c10::IValue(c10::List<std::optional<at::Scalar>>()); }

c10::OperatorHandle op(const char *name, const char *overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
}

}  // namespace

// Whether this libtorch registers the fused ops (a build without oneDNN does not).
extern "C" int vae_model_conv_pointwise_available() {
  return c10::Dispatcher::singleton()
                 .findSchema({"mkldnn::_convolution_pointwise", ""})
                 .has_value() &&
         at::hasMKLDNN();
}

// out = unary(conv(x, w) + b), or with `other`: unary(conv(x, w) + b + other), written into
// `other` itself when `in_place` (oneDNN's sum post-op: no copy of `other`). A transposed
// convolution (weight [in, out, kh, kw]) when `transposed`; `unary` is "none" or a oneDNN
// post-op name ("swish", "relu", ...).
extern "C" char *vae_model_conv_pointwise(at::Tensor **out, const at::Tensor *x,
                                          at::Tensor *other, const at::Tensor *w,
                                          const at::Tensor *b, const int64_t *padding,
                                          const int64_t *stride, int transposed, int in_place,
                                          const char *unary) {
  try {
    const int64_t one[2] = {1, 1}, zero[2] = {0, 0};
    std::vector<c10::IValue> stack;
    if (transposed) {
      if (other) throw std::invalid_argument("a transposed convolution adds no tensor");
      stack = {*x, *w, optional_tensor(b), pair(padding), pair(zero), pair(stride), pair(one),
               int64_t{1}, std::string(unary), no_scalars(), c10::IValue()};
      op("mkldnn::_convolution_transpose_pointwise", "").callBoxed(&stack);
    } else if (other) {
      std::string u(unary);
      // The in-place op takes the accumulated tensor first.
      stack = {in_place ? *other : *x, in_place ? *x : *other, *w, optional_tensor(b), pair(padding), pair(stride), pair(one),
               int64_t{1}, std::string("add"), c10::IValue(),
               u == "none" ? c10::IValue() : c10::IValue(u), no_scalars(), c10::IValue()};
      op(in_place ? "mkldnn::_convolution_pointwise_" : "mkldnn::_convolution_pointwise",
         "binary")
          .callBoxed(&stack);
    } else {
      stack = {*x, *w, optional_tensor(b), pair(padding), pair(stride), pair(one), int64_t{1},
               std::string(unary), no_scalars(), c10::IValue()};
      op("mkldnn::_convolution_pointwise", "").callBoxed(&stack);
    }
    *out = new at::Tensor(stack.at(0).toTensor());
    return nullptr;
  } catch (const c10::Error &e) {
    return strdup(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return strdup(e.what());
  }
}

extern "C" void vae_model_free_error(char *message) { free(message); }

// The math mode of libtorch's oneDNN convolutions of f32 tensors
// (`torch.backends.mkldnn.conv.fp32_precision`). `enter` sets "bf16" (inputs and weights rounded
// to bf16, products summed in f32) and returns the mode before (-1 where libtorch refuses), which
// `exit` restores; `on` says whether the mode is "bf16".
namespace {
constexpr auto MKLDNN = at::Float32Backend::MKLDNN;
constexpr auto CONV = at::Float32Op::CONV;
}  // namespace

extern "C" int vae_model_conv_bf16_products_enter() {
  try {
    auto &ctx = at::globalContext();
    const auto before = ctx.float32Precision(MKLDNN, CONV);
    ctx.setFloat32Precision(MKLDNN, CONV, at::Float32Precision::BF16);
    return static_cast<int>(before);
  } catch (...) {
    return -1;
  }
}

extern "C" void vae_model_conv_bf16_products_exit(int before) {
  try {
    at::globalContext().setFloat32Precision(MKLDNN, CONV, static_cast<at::Float32Precision>(before));
  } catch (...) {
  }
}

extern "C" int vae_model_conv_bf16_products_on() {
  return at::globalContext().float32Precision(MKLDNN, CONV) == at::Float32Precision::BF16;
}
