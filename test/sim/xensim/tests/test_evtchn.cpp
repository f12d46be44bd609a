// Event channels: binding rules, delivery, masking and latching, the
// descriptor's readiness, rebinding.
#include "sim_env.hpp"

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

using namespace xst;

TEST_SUITE("xensim") {
  TEST_CASE("every open fails cleanly without a simulation") {
    unsetenv("XENSIM_DIR");
    errno = 0;
    CHECK(xenevtchn_open(nullptr, 0) == nullptr);
    CHECK(errno == ENOENT);
    errno = 0;
    CHECK(xengnttab_open(nullptr, 0) == nullptr);
    CHECK(errno == ENOENT);
    errno = 0;
    CHECK(xengntshr_open(nullptr, 0) == nullptr);
    CHECK(errno == ENOENT);

    setenv("XENSIM_DIR", "/nonexistent/xensim", 1);
    errno = 0;
    CHECK(xenevtchn_open(nullptr, 0) == nullptr);
    CHECK(errno == ENOENT);

    SimDir sim;
    setenv("XENSIM_DOMID", "not-a-domid", 1);
    errno = 0;
    CHECK(xengnttab_open(nullptr, 0) == nullptr);
    CHECK(errno == EINVAL);
    unsetenv("XENSIM_DOMID");
    auto* h = xenevtchn_open(nullptr, 0);
    CHECK(h != nullptr);
    CHECK(xenevtchn_close(h) == 0);
  }

  TEST_CASE("bind_interdomain needs a remote port that is unbound and open to the caller") {
    SimDir sim;
    auto* g = evtchn_as(kGuest);
    auto* b = evtchn_as(kBack);
    int open_to_us = xenevtchn_bind_unbound_port(g, kBack);
    int open_to_7 = xenevtchn_bind_unbound_port(g, 7);
    REQUIRE(open_to_us > 0);
    REQUIRE(open_to_7 > 0);
    CHECK(open_to_us != open_to_7);

    errno = 0;
    CHECK(xenevtchn_bind_interdomain(b, kGuest, static_cast<evtchn_port_t>(open_to_7)) == -1);
    CHECK(errno == EINVAL);
    errno = 0;
    CHECK(xenevtchn_bind_interdomain(b, kGuest, 0) == -1);
    CHECK(errno == EINVAL);
    errno = 0;
    CHECK(xenevtchn_bind_interdomain(b, kGuest, 1000) == -1);  // a free port
    CHECK(errno == EINVAL);
    errno = 0;
    CHECK(xenevtchn_bind_interdomain(b, kGuest, 100000) == -1);
    CHECK(errno == EINVAL);
    errno = 0;
    CHECK(xenevtchn_bind_interdomain(b, 99, 1) == -1);  // no such domain
    CHECK(errno == ESRCH);

    int bp = xenevtchn_bind_interdomain(b, kGuest, static_cast<evtchn_port_t>(open_to_us));
    REQUIRE(bp > 0);
    auto gi = port_info(kGuest, static_cast<unsigned>(open_to_us));
    CHECK(gi.state == XENSIM_PORT_INTERDOMAIN);
    CHECK(gi.remote_dom == kBack);
    CHECK(gi.remote_port == static_cast<unsigned>(bp));
    auto bi = port_info(kBack, static_cast<unsigned>(bp));
    CHECK(bi.state == XENSIM_PORT_INTERDOMAIN);
    CHECK(bi.remote_dom == kGuest);
    CHECK(bi.remote_port == static_cast<unsigned>(open_to_us));

    // Bound now, so not unbound any more: a second backend cannot take it.
    auto* b2 = evtchn_as(kBack);
    errno = 0;
    CHECK(xenevtchn_bind_interdomain(b2, kGuest, static_cast<evtchn_port_t>(open_to_us)) == -1);
    CHECK(errno == EINVAL);
    // Ports are the binding handle's own.
    errno = 0;
    CHECK(xenevtchn_notify(b2, static_cast<evtchn_port_t>(bp)) == -1);
    CHECK(errno == ENOTCONN);
    errno = 0;
    CHECK(xenevtchn_unbind(b2, static_cast<evtchn_port_t>(bp)) == -1);
    CHECK(errno == ENOTCONN);
    xenevtchn_close(b2);
    xenevtchn_close(b);
    xenevtchn_close(g);
  }

  TEST_CASE("binding sets the new port pending, as Xen does") {
    SimDir sim;
    auto* g = evtchn_as(kGuest);
    auto* b = evtchn_as(kBack);
    int gp = xenevtchn_bind_unbound_port(g, kBack);
    REQUIRE(gp > 0);
    CHECK_FALSE(readable(xenevtchn_fd(b)));
    int bp = xenevtchn_bind_interdomain(b, kGuest, static_cast<evtchn_port_t>(gp));
    REQUIRE(bp > 0);
    set_nonblock(xenevtchn_fd(b));
    CHECK(readable(xenevtchn_fd(b)));
    CHECK(xenevtchn_pending(b) == bp);
    CHECK_FALSE(readable(xenevtchn_fd(g)));  // only the binder's port
    xenevtchn_close(b);
    xenevtchn_close(g);
  }

  TEST_CASE("events on a masked port are latched and delivered once at unmask") {
    SimDir sim;
    Channel ch;
    const int bfd = xenevtchn_fd(ch.back);
    const auto bport = static_cast<evtchn_port_t>(ch.bport);
    const auto gport = static_cast<evtchn_port_t>(ch.gport);

    CHECK_FALSE(readable(bfd));
    REQUIRE(xenevtchn_notify(ch.guest, gport) == 0);
    CHECK(readable(bfd, 1000));
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
    // pending() leaves the port masked and the descriptor quiet.
    CHECK(port_info(kBack, bport).masked);
    CHECK_FALSE(readable(bfd));
    errno = 0;
    CHECK(xenevtchn_pending(ch.back) == -1);
    CHECK(errno == EAGAIN);

    // Three events while masked: latched, nothing readable, nothing pending.
    for (int i = 0; i < 3; ++i) REQUIRE(xenevtchn_notify(ch.guest, gport) == 0);
    CHECK_FALSE(readable(bfd, 20));
    CHECK(xenevtchn_pending(ch.back) == -1);
    CHECK(port_info(kBack, bport).pending);

    // Unmask delivers the latched event, once.
    REQUIRE(xenevtchn_unmask(ch.back, bport) == 0);
    CHECK(readable(bfd));
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
    CHECK_FALSE(readable(bfd));
    CHECK(xenevtchn_pending(ch.back) == -1);
    CHECK_FALSE(port_info(kBack, bport).pending);

    // Nothing latched this time: unmask leaves it quiet and unmasked.
    REQUIRE(xenevtchn_unmask(ch.back, bport) == 0);
    CHECK_FALSE(readable(bfd, 20));
    CHECK(xenevtchn_pending(ch.back) == -1);
    CHECK_FALSE(port_info(kBack, bport).masked);

    // And the next event is delivered at once; the other direction too.
    REQUIRE(xenevtchn_notify(ch.guest, gport) == 0);
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
    REQUIRE(xenevtchn_notify(ch.back, bport) == 0);
    CHECK(readable(xenevtchn_fd(ch.guest), 1000));
    CHECK(xenevtchn_pending(ch.guest) == ch.gport);
  }

  TEST_CASE("the descriptor is readable exactly while something is pending") {
    SimDir sim;
    Channel ch;
    // A second channel on the same backend handle.
    int gp2 = xenevtchn_bind_unbound_port(ch.guest, kBack);
    REQUIRE(gp2 > 0);
    int bp2 = xenevtchn_bind_interdomain(ch.back, kGuest, static_cast<evtchn_port_t>(gp2));
    REQUIRE(bp2 > 0);
    const int bfd = xenevtchn_fd(ch.back);
    CHECK(readable(bfd));
    CHECK(xenevtchn_pending(ch.back) == bp2);
    xenevtchn_unmask(ch.back, static_cast<evtchn_port_t>(bp2));
    CHECK_FALSE(readable(bfd));

    xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(ch.gport));
    xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(gp2));
    CHECK(readable(bfd));
    int first = xenevtchn_pending(ch.back);
    CHECK(readable(bfd));  // one more to go
    int second = xenevtchn_pending(ch.back);
    CHECK_FALSE(readable(bfd));
    CHECK(first != second);
    CHECK((first == ch.bport || first == bp2));
    CHECK((second == ch.bport || second == bp2));
    CHECK(xenevtchn_pending(ch.back) == -1);
    CHECK(errno == EAGAIN);
  }

  TEST_CASE("pending blocks on a blocking descriptor until an event arrives") {
    SimDir sim;
    Channel ch;
    set_nonblock(xenevtchn_fd(ch.back), false);
    auto t0 = std::chrono::steady_clock::now();
    std::thread t([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(ch.gport));
    });
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
    CHECK(ms_since(t0) >= 40);
    t.join();
  }

  // Linux's evtchn device keeps a port in the handle's ring when it is
  // unbound, and read() returns it. Before the sim did the same, the
  // descriptor stayed readable with nothing behind it and a blocking
  // pending() waited forever.
  TEST_CASE("a port unbound while queued is still returned by pending(), without blocking") {
    SimDir sim;
    Channel ch;
    const int bfd = xenevtchn_fd(ch.back);
    const auto bport = static_cast<evtchn_port_t>(ch.bport);
    const auto gport = static_cast<evtchn_port_t>(ch.gport);
    set_nonblock(bfd, false);
    REQUIRE(xenevtchn_notify(ch.guest, gport) == 0);
    REQUIRE(readable(bfd, 1000));
    REQUIRE(xenevtchn_unbind(ch.back, bport) == 0);
    CHECK(readable(bfd));  // still queued, as in Linux's ring

    auto r = bounded_call(2000, [&] { return xenevtchn_pending(ch.back); });
    CHECK(r.value == ch.bport);
    CHECK(r.ms < 1000);
    CHECK_FALSE(readable(bfd));
    set_nonblock(bfd);
    errno = 0;
    CHECK(xenevtchn_pending(ch.back) == -1);
    CHECK(errno == EAGAIN);
    CHECK(xenevtchn_unmask(ch.back, bport) == 0);  // not ours any more: ignored

    // Bound again: Xen's bind-time event is served as usual, and so is the
    // next notify.
    const int bp2 = xenevtchn_bind_interdomain(ch.back, kGuest, gport);
    REQUIRE(bp2 > 0);
    CHECK(xenevtchn_pending(ch.back) == bp2);
    CHECK(xenevtchn_unmask(ch.back, static_cast<evtchn_port_t>(bp2)) == 0);
    CHECK(xenevtchn_pending(ch.back) == -1);
    REQUIRE(xenevtchn_notify(ch.guest, gport) == 0);
    CHECK(readable(bfd, 1000));
    CHECK(xenevtchn_pending(ch.back) == bp2);
  }

  TEST_CASE("unbinding one of two queued ports: pending() returns both, then blocks no more than asked") {
    SimDir sim;
    auto* back = evtchn_as(kBack);
    auto* guest = evtchn_as(kGuest);
    const int g1 = xenevtchn_bind_unbound_port(guest, kBack);
    const int g2 = xenevtchn_bind_unbound_port(guest, kBack);
    REQUIRE(g1 > 0);
    REQUIRE(g2 > 0);
    const int b1 = xenevtchn_bind_interdomain(back, kGuest, static_cast<evtchn_port_t>(g1));
    const int b2 = xenevtchn_bind_interdomain(back, kGuest, static_cast<evtchn_port_t>(g2));
    REQUIRE(b1 > 0);
    REQUIRE(b2 > 0);
    // Both queued by their bind-time events; the descriptor is blocking.
    const int bfd = xenevtchn_fd(back);
    REQUIRE(readable(bfd, 1000));
    REQUIRE(xenevtchn_unbind(back, static_cast<evtchn_port_t>(b1)) == 0);
    std::vector<int> got;
    for (int i = 0; i < 2; ++i) {
      auto r = bounded_call(2000, [&] { return xenevtchn_pending(back); });
      CHECK(r.ms < 1000);
      got.push_back(r.value);
    }
    std::sort(got.begin(), got.end());
    CHECK(got == std::vector<int>{std::min(b1, b2), std::max(b1, b2)});
    CHECK_FALSE(readable(bfd));
    // Nothing left: a blocking pending() now waits, as the device's read()
    // does, until the bound interrupts it.
    auto r = bounded_call(200, [&] { return xenevtchn_pending(back); });
    CHECK(r.value == -1);
    CHECK(r.err == EINTR);
    CHECK(r.ms >= 150);
    xenevtchn_close(back);
    xenevtchn_close(guest);
  }

  TEST_CASE("no lost wakeup when an event races with unmask") {
    SimDir sim;
    Channel ch;
    constexpr int kRounds = 3000;
    std::atomic<int> seen{0};
    std::atomic<bool> failed{false};
    std::thread consumer([&] {
      const int fd = xenevtchn_fd(ch.back);
      while (seen.load() < kRounds && !failed.load()) {
        if (!readable(fd, 2000)) {
          failed = true;  // an event was sent and never became visible
          break;
        }
        int p = xenevtchn_pending(ch.back);
        if (p == -1) continue;  // the ready state was consumed by a previous pass
        if (p != ch.bport) failed = true;
        // Unmask after counting: the next notify lands before the unmask (on
        // every other round, held masked for a while: latched, must come at
        // unmask) or races with it.
        int n = seen.fetch_add(1);
        if (n % 2) {
          auto t0 = std::chrono::steady_clock::now();
          while (ms_since(t0) < 0.05) {
          }
        }
        xenevtchn_unmask(ch.back, static_cast<evtchn_port_t>(p));
      }
    });
    for (int i = 0; i < kRounds && !failed.load(); ++i) {
      xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(ch.gport));
      auto t0 = std::chrono::steady_clock::now();
      while (seen.load() <= i && !failed.load()) {
        if (ms_since(t0) > 3000) {
          failed = true;
          break;
        }
        std::this_thread::yield();
      }
    }
    consumer.join();
    CHECK_FALSE(failed.load());
    CHECK(seen.load() == kRounds);
  }

  TEST_CASE("unbinding returns the peer to unbound, and another backend can bind it") {
    SimDir sim;
    Channel ch;
    const auto gport = static_cast<unsigned>(ch.gport);
    REQUIRE(xenevtchn_unbind(ch.back, static_cast<evtchn_port_t>(ch.bport)) == 0);
    auto gi = port_info(kGuest, gport);
    CHECK(gi.state == XENSIM_PORT_UNBOUND);
    CHECK(gi.remote_dom == kBack);
    CHECK(port_info(kBack, static_cast<unsigned>(ch.bport)).state == XENSIM_PORT_FREE);
    // A notify into an unbound port is dropped, not an error (Xen).
    CHECK(xenevtchn_notify(ch.guest, gport) == 0);

    auto* b2 = evtchn_as(kBack);
    int bp2 = xenevtchn_bind_interdomain(b2, kGuest, gport);
    REQUIRE(bp2 > 0);
    set_nonblock(xenevtchn_fd(b2));
    CHECK(xenevtchn_pending(b2) == bp2);  // bind-time event
    xenevtchn_unmask(b2, static_cast<evtchn_port_t>(bp2));
    REQUIRE(xenevtchn_notify(ch.guest, gport) == 0);
    CHECK(readable(xenevtchn_fd(b2), 1000));
    CHECK(xenevtchn_pending(b2) == bp2);

    // Closing the handle unbinds too.
    xenevtchn_close(b2);
    CHECK(port_info(kGuest, gport).state == XENSIM_PORT_UNBOUND);
    auto* b3 = evtchn_as(kBack);
    CHECK(xenevtchn_bind_interdomain(b3, kGuest, gport) > 0);
    xenevtchn_close(b3);
  }

  TEST_CASE("VIRQs and restricted handles") {
    SimDir sim;
    auto* b = evtchn_as(kBack);
    int vp = xenevtchn_bind_virq(b, VIRQ_DOM_EXC);
    REQUIRE(vp > 0);
    errno = 0;
    CHECK(xenevtchn_bind_virq(b, VIRQ_DOM_EXC) == -1);
    CHECK(errno == EEXIST);
    set_nonblock(xenevtchn_fd(b));
    CHECK(xenevtchn_pending(b) == -1);
    REQUIRE(xensim_send_virq(kBack, VIRQ_DOM_EXC) == 0);
    CHECK(xenevtchn_pending(b) == vp);

    auto* g = evtchn_as(kGuest);
    int gp = xenevtchn_bind_unbound_port(g, kBack);
    auto* r = evtchn_as(kBack);
    REQUIRE(xenevtchn_restrict(r, 6) == 0);
    errno = 0;
    CHECK(xenevtchn_bind_interdomain(r, kGuest, static_cast<evtchn_port_t>(gp)) == -1);
    CHECK(errno == EACCES);
    errno = 0;
    CHECK(xenevtchn_bind_unbound_port(r, kGuest) == -1);
    CHECK(errno == EACCES);
    xenevtchn_close(r);
    xenevtchn_close(g);
    xenevtchn_close(b);
  }

  TEST_CASE("a raised event is a spurious event on the port") {
    SimDir sim;
    Channel ch;
    CHECK(xenevtchn_pending(ch.back) == -1);
    REQUIRE(xensim_raise(kBack, static_cast<unsigned>(ch.bport)) == 0);
    CHECK(readable(xenevtchn_fd(ch.back)));
    CHECK(xenevtchn_pending(ch.back) == ch.bport);
    errno = 0;
    CHECK(xensim_raise(kBack, 3000) == -1);  // not a bound port
    CHECK(errno == EINVAL);
  }

  TEST_CASE("several handles of one process, one thread each") {
    SimDir sim;
    constexpr int kPairs = 4, kRounds = 500;
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    // Opened here: the domid comes from the (process-wide) environment.
    std::vector<std::unique_ptr<Channel>> chans;
    for (int t = 0; t < kPairs; ++t) chans.push_back(std::make_unique<Channel>());
    for (int t = 0; t < kPairs; ++t) {
      threads.emplace_back([&, t] {
        // Each thread: its own guest and backend handles, a ping-pong.
        Channel& ch = *chans[static_cast<std::size_t>(t)];
        set_nonblock(xenevtchn_fd(ch.back), false);
        set_nonblock(xenevtchn_fd(ch.guest), false);
        for (int i = 0; i < kRounds; ++i) {
          xenevtchn_notify(ch.guest, static_cast<evtchn_port_t>(ch.gport));
          if (xenevtchn_pending(ch.back) != ch.bport) ++failures;
          xenevtchn_unmask(ch.back, static_cast<evtchn_port_t>(ch.bport));
          xenevtchn_notify(ch.back, static_cast<evtchn_port_t>(ch.bport));
          if (xenevtchn_pending(ch.guest) != ch.gport) ++failures;
          xenevtchn_unmask(ch.guest, static_cast<evtchn_port_t>(ch.gport));
        }
      });
    }
    for (auto& t : threads) t.join();
    CHECK(failures.load() == 0);
  }

}  // TEST_SUITE
