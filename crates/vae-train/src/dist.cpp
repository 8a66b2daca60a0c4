// A process group on libtorch's own c10d: the TCPStore rendezvous, ProcessGroupGloo for CPU
// tensors and ProcessGroupNCCL for CUDA tensors — the code PyTorch DDP runs — behind a few C
// functions that dist.rs calls. C++ exceptions are caught here and returned as a message
// (freed with vae_free_error, from fused_adam.cpp).
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

char *message(const std::exception &e) { return strdup(e.what()); }

c10::intrusive_ptr<c10d::Backend> make_backend(const c10::intrusive_ptr<c10d::Store> &store,
                                               int rank, int world, bool nccl,
                                               const std::string &host,
                                               std::chrono::milliseconds timeout) {
  if (nccl) {
#ifdef USE_C10D_NCCL
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
#else
    throw std::runtime_error("this build has no NCCL backend");
#endif
  }
#ifdef USE_C10D_GLOO
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  // As torch.distributed does: GLOO_SOCKET_IFNAME names the interface; otherwise a loopback
  // rendezvous binds to loopback, and any other to the address this host's name resolves to.
  const char *ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname != nullptr && *ifname != '\0') {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else if (host == "127.0.0.1" || host == "localhost" || host == "::1") {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  } else {
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  // One thread per collective in flight: the trainer runs one at a time.
  options->threads = 1;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
#else
  throw std::runtime_error("this build has no Gloo backend");
#endif
}

void wait(const c10::intrusive_ptr<c10d::Work> &work, std::chrono::milliseconds timeout) {
  if (!work->wait(timeout)) {
    throw std::runtime_error("the collective was aborted");
  }
}

} // namespace

// Joins (or, with is_server, hosts) the TCPStore at host:port, under `prefix`, then builds the
// backend for `world` ranks. Blocks until every rank has joined or `timeout_ms` passes.
extern "C" char *vae_dist_new(const char *host, uint16_t port, int is_server, int rank,
                              int world, const char *prefix, int64_t timeout_ms, int nccl,
                              void **out) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions options;
    options.port = port;
    options.isServer = is_server != 0;
    options.numWorkers = std::nullopt;
    options.waitWorkers = false;
    options.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto backend = make_backend(store, rank, world, nccl != 0, std::string(host), timeout);
    *out = new Group{store, backend, timeout};
    return nullptr;
  } catch (const std::exception &e) {
    return message(e);
  }
}

extern "C" void vae_dist_free(void *group) { delete static_cast<Group *>(group); }

// Hosts a TCPStore on `port` (0: a free port, written to *bound): what
// torchrun's agent does, for `vae train --nproc`.
extern "C" char *vae_dist_store_host(uint16_t port, int64_t timeout_ms, void **out,
                                     uint16_t *bound) {
  try {
    c10d::TCPStoreOptions options;
    options.port = port;
    options.isServer = true;
    options.waitWorkers = false;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    auto *store = new c10::intrusive_ptr<c10d::TCPStore>(
        c10::make_intrusive<c10d::TCPStore>(std::string("127.0.0.1"), options));
    *bound = (*store)->getPort();
    *out = store;
    return nullptr;
  } catch (const std::exception &e) {
    return message(e);
  }
}

extern "C" void vae_dist_store_free(void *store) {
  delete static_cast<c10::intrusive_ptr<c10d::TCPStore> *>(store);
}

// Sums `tensor` in place over the ranks.
extern "C" char *vae_dist_allreduce_sum(void *group, at::Tensor *tensor) {
  try {
    auto *g = static_cast<Group *>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    wait(g->backend->allreduce(tensors, options), g->timeout);
    return nullptr;
  } catch (const std::exception &e) {
    return message(e);
  }
}

// Overwrites `tensor` on every rank with rank `root`'s.
extern "C" char *vae_dist_broadcast(void *group, at::Tensor *tensor, int root) {
  try {
    auto *g = static_cast<Group *>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    wait(g->backend->broadcast(tensors, options), g->timeout);
    return nullptr;
  } catch (const std::exception &e) {
    return message(e);
  }
}

// Stores `len` bytes under `key`.
extern "C" char *vae_dist_store_set(void *group, const char *key, const uint8_t *value,
                                    size_t len) {
  try {
    auto *g = static_cast<Group *>(group);
    g->store->set(std::string(key), std::vector<uint8_t>(value, value + len));
    return nullptr;
  } catch (const std::exception &e) {
    return message(e);
  }
}

// Reads `key`, waiting for it up to the store's timeout; the bytes are malloc'ed into *value
// (freed with vae_free_error).
extern "C" char *vae_dist_store_get(void *group, const char *key, uint8_t **value,
                                    size_t *len) {
  try {
    auto *g = static_cast<Group *>(group);
    auto bytes = g->store->get(std::string(key));
    *len = bytes.size();
    *value = static_cast<uint8_t *>(malloc(bytes.size() + 1));
    if (*value == nullptr) {
      throw std::bad_alloc();
    }
    memcpy(*value, bytes.data(), bytes.size());
    return nullptr;
  } catch (const std::exception &e) {
    return message(e);
  }
}

// Which backends this build has: bit 0 Gloo, bit 1 NCCL.
extern "C" int vae_dist_backends() {
  int backends = 0;
#ifdef USE_C10D_GLOO
  backends |= 1;
#endif
#ifdef USE_C10D_NCCL
  backends |= 2;
#endif
  return backends;
}
