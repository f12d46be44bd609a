#include "blkback/storage/nbd_core.hpp"

#include <cerrno>

namespace xbd::blkback::storage::nbd {

void core::submit(op_kind k, std::uint64_t offset, std::uint64_t length, void* buf, completion& done) {
  if (closing_) return;
  op* o = free_.pop_front();
  if (!o) {
    fail_later(done, errno_code(EBUSY));  // more than the ring's depth: its bug
    return;
  }
  o->kind = k;
  o->offset = offset;
  o->length = length;
  o->cursor = 0;
  o->lost_at = {};
  o->buf = buf;
  o->done = &done;
  if (!up_ && gave_up_) {
    finish(o, errno_code(EIO));
    return;
  }
  o->state = op_state::waiting;
  waiting_.push_back(o);
  if (up_) kick();
}

// Issues what waits, then makes the watch follow libnbd: the serve loop is
// woken if the connection died under the new commands.
void core::kick() {
  issue();
  if (link_->down() || !doomed_.empty())
    watch_->wake();
  else
    watch_->watch(nbd_aio_get_fd(link_->handle()), static_cast<unsigned>(nbd_aio_get_direction(link_->handle())));
}

void core::requeue(op& o, bool front) {
  if (o.lost_at == std::chrono::steady_clock::time_point{}) o.lost_at = std::chrono::steady_clock::now();
  o.state = op_state::waiting;
  if (front)
    waiting_.push_front(&o);
  else
    waiting_.push_back(&o);
}

void core::issue() {
  while (up_ && doomed_.empty() && !link_->down()) {
    op* o = waiting_.pop_front();
    if (!o) return;
    if (o->lost_at != std::chrono::steady_clock::time_point{} &&
        std::chrono::steady_clock::now() - o->lost_at >= cfg_->opt.reconnect) {
      finish(o, errno_code(EIO));
      continue;
    }
    if (!issue_one(*o)) return;
  }
}

// False if the connection turned out dead: the operation waits again.
bool core::issue_one(op& o) {
  nbd_handle* h = link_->handle();
  const nbd_completion_callback cb{&core::replied, &o, nullptr};
  o.state = op_state::wire;
  if (on_wire_++ == 0) last_reply_ = std::chrono::steady_clock::now();
  std::int64_t cookie = -1;
  switch (o.kind) {
    case op_kind::read:
      cookie = nbd_aio_pread(h, o.buf, o.length, o.offset, cb, 0);
      break;
    case op_kind::write:
      cookie = nbd_aio_pwrite(h, o.buf, o.length, o.offset, cb, 0);
      break;
    case op_kind::flush:
      cookie = nbd_aio_flush(h, cb, 0);
      break;
    case op_kind::trim:
      o.piece = std::min(o.length - o.cursor, max_trim);
      cookie = nbd_aio_trim(h, o.piece, o.offset + o.cursor, cb, 0);
      break;
  }
  if (cookie != -1) return true;
  // Refused before it was queued: libnbd calls no callback then.
  --on_wire_;
  const int err = nbd_get_errno();
  const char* msg = nbd_get_error();
  if (link_->down()) {
    link_->note_error(msg ? msg : "", err);
    o.state = op_state::waiting;
    waiting_.push_front(&o);
    return false;
  }
  finish(&o, errno_code(err != 0 ? err : EIO));  // unaligned, too long, not offered by the server
  return true;
}

// libnbd's completion callback, inside one of its calls: no libnbd call here.
int core::replied(void* user_data, int* error) {
  auto& o = *static_cast<op*>(user_data);
  o.owner->on_reply(o, *error);
  return 1;  // retire the command
}

void core::on_reply(op& o, int err) {
  if (o.state != op_state::wire || quiet_) return;
  --on_wire_;
  last_reply_ = std::chrono::steady_clock::now();
  if (err == ENOTCONN || err == ESHUTDOWN) {
    // The connection went (or the server is going) before an answer: the
    // operation did not happen as far as we know, and goes again.
    if (err == ESHUTDOWN) doomed_ = "the server is shutting down";
    requeue(o);
    return;
  }
  if (err == 0 && o.kind == op_kind::trim && (o.cursor += o.piece) < o.length) {
    o.state = op_state::waiting;
    waiting_.push_front(&o);
    return;
  }
  finish(&o, err != 0 ? errno_code(err) : error_code{});
}

// Completions go out together on a later turn of the executor, never from
// inside the call that started an operation, nor from inside libnbd.
void core::finish(op* o, error_code ec) {
  o->ec = ec;
  o->state = op_state::done;
  done_.push_back(o);
  if (delivering_) return;
  delivering_ = true;
  asio::post(ex_, [self = shared_from_this()] { self->deliver(); });
}

void core::deliver() {
  delivering_ = false;
  if (closing_) return;
  while (op* o = done_.pop_front()) {
    completion* c = std::exchange(o->done, nullptr);
    const error_code ec = o->ec;
    o->state = op_state::free;
    free_.push_back(o);
    c->complete(ec);
  }
}

void core::cancel_waiting() {
  while (op* o = waiting_.pop_front()) finish(o, asio::error::operation_aborted);
}

}  // namespace xbd::blkback::storage::nbd
