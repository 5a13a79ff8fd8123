// The native gRPC frontend: gRPC's C++ server owns the port, its HTTP/2 transport and its
// threads; Python runs the services. Every call is taken by a generic callback reactor
// (raw bytes, any method), and what happens to calls reaches Python as events in one
// queue, announced through an eventfd that the asyncio loop watches. One wakeup of the
// loop hands it every event that arrived since the last one, so under load Python runs
// once per group of requests instead of once per request, and no Python code runs on
// gRPC's threads: they never take the GIL.
//
// Calls of a method whose requests are a stream read one message each time Python asks
// (flow control stays with the client); every other call reads its one request before
// it is announced. Python answers with write (a streamed message), finish (status, with
// an optional last message) and read.

#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include <atomic>
#include <cstring>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

enum Kind : int {
  kCall = 0,       // (kind, id, method, payload | None, timeout_s | None, metadata)
  kMessage = 1,    // (kind, id, payload): a streamed request message Python asked for
  kHalfClose = 2,  // (kind, id): the client sends no more messages
  kCancelled = 3,  // (kind, id): the client cancelled or the deadline passed
  kDone = 4,       // (kind, id): the call is over; its id is never used again
  kWritable = 5,   // (kind, id): the queued messages fell under the low mark
};

// Streamed answers queued beyond this make write() tell Python to wait for kWritable.
constexpr size_t kHighWrites = 16;
constexpr size_t kLowWrites = 4;

struct Event {
  int kind;
  uint64_t id;
  std::string method;
  std::optional<grpc::ByteBuffer> payload;
  double timeout_s = -1.0;  // negative: no deadline
  std::vector<std::pair<std::string, std::string>> metadata;
};

class Frontend;

grpc::ByteBuffer ToBuffer(const char* data, size_t size) {
  grpc::Slice slice(data, size);
  return grpc::ByteBuffer(&slice, 1);
}

// Copies a received message into a new bytes object (one copy, as grpcio's own does).
PyObject* ToBytes(grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) {
    return PyBytes_FromStringAndSize(nullptr, 0);
  }
  size_t total = 0;
  for (const auto& s : slices) total += s.size();
  PyObject* bytes = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(total));
  if (bytes == nullptr) return nullptr;
  char* out = PyBytes_AS_STRING(bytes);
  for (const auto& s : slices) {
    std::memcpy(out, s.begin(), s.size());
    out += s.size();
  }
  return bytes;
}

class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(Frontend* frontend, grpc::GenericCallbackServerContext* ctx, uint64_t id,
       bool streaming);

  void Begin();
  void Read();
  size_t Write(const char* data, size_t size);
  void Finish(int code, const std::string& details, const char* data, size_t size,
              bool has_payload);
  void FinishWith(int code, const std::string& details, bool has_payload,
                  grpc::ByteBuffer payload);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  std::shared_ptr<Call> self;  // the map's and gRPC's hold, dropped in OnDone

 private:
  void Announce(std::optional<grpc::ByteBuffer> payload);

  Frontend* frontend_;
  grpc::GenericCallbackServerContext* ctx_;
  uint64_t id_;
  bool streaming_;
  grpc::ByteBuffer in_;

  std::mutex mu_;
  std::deque<grpc::ByteBuffer> queued_;  // answers waiting for the write in progress
  grpc::ByteBuffer writing_buffer_;      // alive until OnWriteDone
  bool writing_ = false;
  bool finish_called_ = false;  // Python finished: no more writes are taken
  bool finish_started_ = false;
  bool want_writable_ = false;
  bool write_failed_ = false;
  grpc::Status status_;
};

class Frontend : public grpc::CallbackGenericService {
 public:
  Frontend(std::vector<std::string> streaming_methods) : event_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    for (auto& m : streaming_methods) streaming_.insert(std::move(m));
    if (event_fd_ < 0) throw std::runtime_error("eventfd failed");
    responder_ = std::thread([this] { Respond(); });
  }

  ~Frontend() override {
    if (server_ && !shut_down_) Shutdown(0.0);
    StopResponder();
    close(event_fd_);
    close(responder_fd_);
  }

  // An answer Python handed over; the responder thread starts sending it.
  struct Reply {
    uint64_t id;
    int code;
    std::string details;
    bool has_payload;
    grpc::ByteBuffer payload;
  };

  // Sending an answer runs gRPC's write path (framing, the socket write, often the call's
  // end) on the calling thread: about half of the event loop's time per request when
  // the loop did it. The loop only queues answers; this thread sends them.
  // Queued answers wait for flush(), which the loop calls once per iteration: one wakeup
  // of this thread per group of answers, not one per answer. Neither takes a lock the
  // sending thread holds: on a busy machine a thread holding a lock can lose its core
  // for a whole time slice, and the event loop would wait for it.
  void Answer(Reply reply) {
    auto* node = new ReplyNode{std::move(reply), replies_head_.load(std::memory_order_relaxed)};
    while (!replies_head_.compare_exchange_weak(node->next, node, std::memory_order_release,
                                                std::memory_order_relaxed)) {
    }
  }

  void Flush() {
    if (responder_sleeping_.exchange(false)) {
      uint64_t one = 1;
      ssize_t n = write(responder_fd_, &one, sizeof one);
      (void)n;
    }
  }

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    uint64_t id = next_id_.fetch_add(1);
    bool streaming = streaming_.count(ctx->method()) > 0;
    auto call = std::make_shared<Call>(this, ctx, id, streaming);
    call->self = call;
    {
      std::lock_guard<std::mutex> lock(calls_mu_);
      calls_.emplace(id, call);
    }
    call->Begin();
    return call.get();
  }

  int Start(const std::string& address, int max_receive, int max_send, bool reuse_port,
            std::optional<std::string> key, std::optional<std::string> cert,
            std::optional<std::string> roots, bool mutual) {
    grpc::ServerBuilder builder;
    std::shared_ptr<grpc::ServerCredentials> creds;
    if (key && cert) {
      grpc::SslServerCredentialsOptions ssl(
          mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                 : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
      if (mutual && roots) ssl.pem_root_certs = *roots;
      ssl.pem_key_cert_pairs.push_back({*key, *cert});
      creds = grpc::SslServerCredentials(ssl);
    } else {
      creds = grpc::InsecureServerCredentials();
    }
    int port = 0;
    builder.AddListeningPort(address, creds, &port);
    builder.SetMaxReceiveMessageSize(max_receive);
    builder.SetMaxSendMessageSize(max_send);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, reuse_port ? 1 : 0);
    builder.RegisterCallbackGenericService(this);
    {
      py::gil_scoped_release release;
      server_ = builder.BuildAndStart();
    }
    if (!server_ || port == 0) {
      server_.reset();
      return 0;
    }
    return port;
  }

  // Stops taking calls; calls in progress have until the grace to be finished by
  // Python, then gRPC cancels them. Blocks (without the GIL) until every call is over.
  void Shutdown(double grace_s) {
    if (!server_) return;
    py::gil_scoped_release release;
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6));
    server_->Shutdown(deadline);
    // Answers Python gave in time are sent first (the responder may still hold some);
    // calls Python never finished (it may have stopped listening) are then finished
    // here, so that Wait can return.
    Flush();
    for (int i = 0; i < 100; ++i) {
      if (!replies_head_.load() && !responder_busy_.load()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::vector<std::shared_ptr<Call>> left;
    {
      std::lock_guard<std::mutex> lock(calls_mu_);
      for (auto& [id, call] : calls_) left.push_back(call);
    }
    for (auto& call : left) {
      call->Finish(static_cast<int>(grpc::StatusCode::UNAVAILABLE), "server stopped", nullptr, 0,
                   false);
    }
    server_->Wait();
    shut_down_ = true;
  }

  int fd() const { return event_fd_; }

  size_t open_calls() {
    std::lock_guard<std::mutex> lock(calls_mu_);
    return calls_.size();
  }

  void Push(Event event) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      events_.push_back(std::move(event));
      wake = !signalled_;
      signalled_ = true;
    }
    if (wake) {
      uint64_t one = 1;
      ssize_t n = write(event_fd_, &one, sizeof one);
      (void)n;
    }
  }

  void Forget(uint64_t id) {
    std::lock_guard<std::mutex> lock(calls_mu_);
    calls_.erase(id);
  }

  std::shared_ptr<Call> Find(uint64_t id) {
    std::lock_guard<std::mutex> lock(calls_mu_);
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : it->second;
  }

  void Respond();

  void StopResponder() {
    if (stopping_.exchange(true)) return;
    uint64_t one = 1;
    ssize_t n = write(responder_fd_, &one, sizeof one);
    (void)n;
    if (responder_.joinable()) responder_.join();
  }

  py::list Drain() {
    std::deque<Event> events;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      events.swap(events_);
      signalled_ = false;
      uint64_t count;
      ssize_t n = read(event_fd_, &count, sizeof count);
      (void)n;
    }
    py::list out;
    for (auto& e : events) {
      switch (e.kind) {
        case kCall: {
          py::object payload = py::none();
          if (e.payload) payload = py::reinterpret_steal<py::object>(ToBytes(*e.payload));
          py::object timeout = e.timeout_s < 0 ? py::object(py::none()) : py::float_(e.timeout_s);
          py::tuple metadata(e.metadata.size());
          for (size_t i = 0; i < e.metadata.size(); ++i) {
            const auto& [k, v] = e.metadata[i];
            bool binary = k.size() > 4 && k.compare(k.size() - 4, 4, "-bin") == 0;
            py::object value = binary ? py::object(py::bytes(v)) : py::object(py::str(v));
            metadata[i] = py::make_tuple(py::str(k), value);
          }
          out.append(py::make_tuple(e.kind, e.id, py::str(e.method), payload, timeout, metadata));
          break;
        }
        case kMessage:
          out.append(py::make_tuple(e.kind, e.id,
                                    py::reinterpret_steal<py::object>(ToBytes(*e.payload))));
          break;
        default:
          out.append(py::make_tuple(e.kind, e.id));
      }
    }
    return out;
  }

 private:
  std::unordered_set<std::string> streaming_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex calls_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Call>> calls_;
  std::mutex events_mu_;
  std::deque<Event> events_;
  bool signalled_ = false;
  int event_fd_;
  std::unique_ptr<grpc::Server> server_;
  struct ReplyNode {
    Reply reply;
    ReplyNode* next;
  };
  std::atomic<ReplyNode*> replies_head_{nullptr};  // pushed by Python, taken all at once
  std::atomic<bool> responder_sleeping_{false};
  std::atomic<bool> responder_busy_{false};
  std::atomic<bool> stopping_{false};
  int responder_fd_ = eventfd(0, EFD_CLOEXEC);
  bool shut_down_ = false;
  std::thread responder_;
};

Call::Call(Frontend* frontend, grpc::GenericCallbackServerContext* ctx, uint64_t id,
           bool streaming)
    : frontend_(frontend), ctx_(ctx), id_(id), streaming_(streaming) {}

void Call::Begin() {
  if (streaming_) {
    Announce(std::nullopt);
  } else {
    StartRead(&in_);
  }
}

void Call::Announce(std::optional<grpc::ByteBuffer> payload) {
  Event e;
  e.kind = kCall;
  e.id = id_;
  e.method = ctx_->method();
  e.payload = std::move(payload);
  auto deadline = ctx_->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    e.timeout_s =
        std::max(0.0, std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count());
  }
  for (const auto& [key, value] : ctx_->client_metadata()) {
    if (key.size() && *key.data() == ':') continue;
    e.metadata.emplace_back(std::string(key.data(), key.size()),
                            std::string(value.data(), value.size()));
  }
  frontend_->Push(std::move(e));
}

void Call::Read() { StartRead(&in_); }

void Call::OnReadDone(bool ok) {
  if (!streaming_) {
    if (ok) {
      Announce(std::move(in_));
      in_.Clear();
    } else {
      // No request arrived (the client went away first): nothing for Python to answer.
      Finish(static_cast<int>(grpc::StatusCode::CANCELLED), "no request received", nullptr, 0,
             false);
    }
    return;
  }
  Event e;
  e.id = id_;
  if (ok) {
    e.kind = kMessage;
    e.payload = std::move(in_);
    in_.Clear();
  } else {
    e.kind = kHalfClose;
  }
  frontend_->Push(std::move(e));
}

size_t Call::Write(const char* data, size_t size) {
  grpc::ByteBuffer buffer = ToBuffer(data, size);
  size_t queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finish_called_ || write_failed_) return 0;
    if (writing_) {
      queued_.push_back(std::move(buffer));
      queued = queued_.size();
      if (queued >= kHighWrites) want_writable_ = true;
      return queued;
    }
    writing_ = true;
    writing_buffer_ = std::move(buffer);
  }
  StartWrite(&writing_buffer_);
  return 0;
}

void Call::OnWriteDone(bool ok) {
  bool finish = false;
  bool writable = false;
  bool next = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) {
      write_failed_ = true;
      queued_.clear();
    }
    if (!queued_.empty()) {
      writing_buffer_ = std::move(queued_.front());
      queued_.pop_front();
      next = true;
    } else {
      writing_ = false;
      if (finish_called_ && !finish_started_) {
        finish_started_ = true;
        finish = true;
      }
    }
    if (want_writable_ && (queued_.size() <= kLowWrites || write_failed_)) {
      want_writable_ = false;
      writable = true;
    }
  }
  if (writable) {
    Event e;
    e.kind = kWritable;
    e.id = id_;
    frontend_->Push(std::move(e));
  }
  if (next) {
    StartWrite(&writing_buffer_);
  } else if (finish) {
    grpc::ServerGenericBidiReactor::Finish(status_);
  }
}

void Call::Finish(int code, const std::string& details, const char* data, size_t size,
                  bool has_payload) {
  FinishWith(code, details, has_payload,
             has_payload ? ToBuffer(data, size) : grpc::ByteBuffer());
}

void Call::FinishWith(int code, const std::string& details, bool has_payload,
                      grpc::ByteBuffer payload) {
  bool finish_now = false;
  bool write_and_finish = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finish_called_) return;
    finish_called_ = true;
    status_ = grpc::Status(static_cast<grpc::StatusCode>(code), details);
    if (has_payload && !write_failed_) {
      if (writing_) {
        queued_.push_back(std::move(payload));
      } else {
        writing_buffer_ = std::move(payload);
        write_and_finish = true;
        finish_started_ = true;
      }
    } else if (!writing_) {
      finish_now = true;
      finish_started_ = true;
    }
  }
  if (write_and_finish) {
    StartWriteAndFinish(&writing_buffer_, grpc::WriteOptions(), status_);
  } else if (finish_now) {
    grpc::ServerGenericBidiReactor::Finish(status_);
  }
}

void Call::OnCancel() {
  Event e;
  e.kind = kCancelled;
  e.id = id_;
  frontend_->Push(std::move(e));
}

void Call::OnDone() {
  Event e;
  e.kind = kDone;
  e.id = id_;
  frontend_->Push(std::move(e));
  frontend_->Forget(id_);
  std::shared_ptr<Call> keep = std::move(self);  // the object goes when the last hold does
}

void Frontend::Respond() {
  // SCHED_BATCH: waking this thread does not preempt the thread that woke it (the event
  // loop, which runs every request's Python); it runs on an idle core or when the
  // loop's time slice ends.
  sched_param param{};
  pthread_setschedparam(pthread_self(), SCHED_BATCH, &param);
  std::vector<ReplyNode*> batch;
  for (;;) {
    responder_busy_.store(true);  // before taking: shutdown waits for what is taken
    ReplyNode* head = replies_head_.exchange(nullptr, std::memory_order_acquire);
    if (head == nullptr) {
      responder_busy_.store(false);
      if (stopping_.load()) return;
      // Announce the sleep, then look once more: an answer pushed before the
      // announcement is seen here, one pushed after it makes flush() write the eventfd.
      responder_sleeping_.store(true);
      if (replies_head_.load() == nullptr && !stopping_.load()) {
        uint64_t count;
        ssize_t n = read(responder_fd_, &count, sizeof count);
        (void)n;
      }
      responder_sleeping_.store(false);
      continue;
    }
    for (ReplyNode* node = head; node != nullptr; node = node->next) batch.push_back(node);
    // The stack holds the newest first; answers go out in the order they were given.
    for (auto it = batch.rbegin(); it != batch.rend(); ++it) {
      Reply& reply = (*it)->reply;
      auto call = Find(reply.id);
      if (call) call->FinishWith(reply.code, reply.details, reply.has_payload, std::move(reply.payload));
      delete *it;
    }
    batch.clear();
    responder_busy_.store(false);
  }
}

// Python's side: every operation names the call by id; an id that is over is ignored.
void PyFinish(Frontend& fe, uint64_t id, int code, std::string details, py::object payload) {
  Frontend::Reply reply{id, code, std::move(details), !payload.is_none(), grpc::ByteBuffer()};
  if (reply.has_payload) {
    char* data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(payload.ptr(), &data, &size) != 0) throw py::error_already_set();
    reply.payload = ToBuffer(data, static_cast<size_t>(size));
  }
  fe.Answer(std::move(reply));
}

size_t PyWrite(Frontend& fe, uint64_t id, py::bytes payload) {
  auto call = fe.Find(id);
  if (!call) return 0;
  char* data;
  Py_ssize_t size;
  if (PyBytes_AsStringAndSize(payload.ptr(), &data, &size) != 0) throw py::error_already_set();
  py::gil_scoped_release release;
  return call->Write(data, static_cast<size_t>(size));
}

void PyRead(Frontend& fe, uint64_t id) {
  auto call = fe.Find(id);
  if (!call) return;
  py::gil_scoped_release release;
  call->Read();
}

}  // namespace

PYBIND11_MODULE(_frontend, m) {
  m.doc() = "gRPC's C++ server as warpserve's transport; services run in Python.";
  m.attr("CALL") = static_cast<int>(kCall);
  m.attr("MESSAGE") = static_cast<int>(kMessage);
  m.attr("HALF_CLOSE") = static_cast<int>(kHalfClose);
  m.attr("CANCELLED") = static_cast<int>(kCancelled);
  m.attr("DONE") = static_cast<int>(kDone);
  m.attr("WRITABLE") = static_cast<int>(kWritable);
  m.attr("HIGH_WRITES") = kHighWrites;
  m.attr("GRPC_VERSION") = grpc::Version();
  py::class_<Frontend>(m, "Frontend")
      .def(py::init<std::vector<std::string>>(), py::arg("streaming_methods"))
      .def("start", &Frontend::Start, py::arg("address"), py::arg("max_receive"),
           py::arg("max_send"), py::arg("reuse_port"), py::arg("private_key") = py::none(),
           py::arg("cert_chain") = py::none(), py::arg("root_certs") = py::none(),
           py::arg("mutual") = false)
      .def("shutdown", &Frontend::Shutdown, py::arg("grace_s"))
      .def("fileno", &Frontend::fd)
      .def("open_calls", &Frontend::open_calls)
      .def("drain", &Frontend::Drain)
      .def("finish", &PyFinish, py::arg("id"), py::arg("code"), py::arg("details"),
           py::arg("payload") = py::none())
      .def("flush", &Frontend::Flush)
      .def("write", &PyWrite, py::arg("id"), py::arg("payload"))
      .def("read", &PyRead, py::arg("id"));
}
