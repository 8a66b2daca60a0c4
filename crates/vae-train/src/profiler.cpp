// libtorch's own profiler (the Kineto profiler torch.profiler drives), which tch does not bind:
// every operator libtorch runs between start and stop, forward and autograd's backward alike,
// written as a Chrome trace (the format of torch.profiler's export_chrome_trace). Called from
// profile.rs; C++ exceptions are caught here and returned as a message (freed with
// vae_profiler_free_error).
#include <ATen/Context.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <set>
#include <string>

namespace {
std::set<torch::profiler::impl::ActivityType> cpu_activities() {
  return {torch::profiler::impl::ActivityType::CPU};
}

torch::profiler::impl::ProfilerConfig cpu_config() {
  // Input shapes on: the trace then names each convolution's sizes, as torch.profiler's
  // record_shapes does.
  return torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::KINETO,
                                               /*report_input_shapes=*/true);
}
}  // namespace

extern "C" char *vae_profiler_start() {
  try {
    // Without a GPU, Kineto's only error is that it found none ("gpuGetDeviceCount failed"),
    // printed on stderr: quieten it unless the user set a level.
    if (!at::hasCUDA()) {
      setenv("KINETO_LOG_LEVEL", "5", /*overwrite=*/0);
    }
    torch::autograd::profiler::prepareProfiler(cpu_config(), cpu_activities());
    torch::autograd::profiler::enableProfiler(cpu_config(), cpu_activities());
    return nullptr;
  } catch (const std::exception &e) {
    return strdup(e.what());
  }
}

// Stops the profiler started by vae_profiler_start and writes its trace to `path` (or drops
// it when `path` is null).
extern "C" char *vae_profiler_stop(const char *path) {
  try {
    auto result = torch::autograd::profiler::disableProfiler();
    if (path != nullptr && result) {
      result->save(std::string(path));
    }
    return nullptr;
  } catch (const std::exception &e) {
    return strdup(e.what());
  }
}

extern "C" void vae_profiler_free_error(char *message) { free(message); }
