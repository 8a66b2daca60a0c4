// libtorch's fused Adam / AdamW kernels (at::_fused_adam_, at::_fused_adamw_: one pass over
// each parameter for the whole update), which tch does not bind. Called from fused.rs; C++
// exceptions are caught here and returned as a message (freed with vae_free_error).
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <vector>

extern "C" char *vae_fused_adam(at::Tensor *const *params, at::Tensor *const *grads,
                                at::Tensor *const *exp_avgs, at::Tensor *const *exp_avg_sqs,
                                int64_t n, double step, double lr, double beta1, double beta2,
                                double weight_decay, double eps, int adamw) {
  try {
    std::vector<at::Tensor> p, g, m, v, steps;
    // The kernel only reads the step count: one tensor serves every parameter.
    at::Tensor t = n > 0 ? at::scalar_tensor(step, params[0]->options().dtype(at::kFloat))
                         : at::Tensor();
    for (int64_t i = 0; i < n; i++) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      steps.push_back(t);
    }
    std::vector<at::Tensor> none;
    if (adamw) {
      at::_fused_adamw_(p, g, m, v, none, steps, lr, beta1, beta2, weight_decay, eps, false,
                        false);
    } else {
      at::_fused_adam_(p, g, m, v, none, steps, lr, beta1, beta2, weight_decay, eps, false,
                       false);
    }
    return nullptr;
  } catch (const std::exception &e) {
    return strdup(e.what());
  }
}

extern "C" void vae_free_error(char *message) { free(message); }
