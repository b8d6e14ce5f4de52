import Dispatch
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

extension ProcessControl {
    /// Returns when one of `processes` has exited, or at `deadline`. An exit is an event: each
    /// process is pinned with a pidfd, which becomes readable when it exits (the kernel tells
    /// epoll; nothing polls `/proc`). True when one exited (or was gone already). Without pidfds
    /// (an old kernel) it returns after 20 ms, for the caller to look again.
    public static func waitForAnExit(of processes: [SpawnedProcess], until deadline: ContinuousClock.Instant) async -> Bool {
        guard let open = PidFD.open else {
            await Task.detached { try? await Task.sleep(for: .milliseconds(20)) }.value
            return !processes.allSatisfy(isAlive)
        }
        var descriptors: [Int32] = []
        for process in processes {
            let descriptor = open(process.pid, 0)
            // Pinned first, then checked: a pid reused since is not this process.
            guard descriptor >= 0, isAlive(process) else {
                if descriptor >= 0 { close(descriptor) }
                for other in descriptors { close(other) }
                return true
            }
            descriptors.append(descriptor)
        }
        let remaining = deadline - ContinuousClock.now
        guard remaining > .zero else {
            for descriptor in descriptors { close(descriptor) }
            return false
        }
        return await ExitWait(descriptors: descriptors, timeout: remaining).result()
    }
}

/// One wait for the first of some pidfds to become readable, or a timeout: dispatch sources on a
/// serial queue, which owns the state (set up on it before any handler can run), and the
/// continuation resumed once.
private final class ExitWait: @unchecked Sendable {
    private let queue = DispatchQueue(label: "cloud-agent.process-exits")
    private let descriptors: [Int32]
    private let timeout: Duration
    private var sources: [any DispatchSourceProtocol] = []
    private var continuation: CheckedContinuation<Bool, Never>?

    init(descriptors: [Int32], timeout: Duration) {
        self.descriptors = descriptors
        self.timeout = timeout
    }

    func result() async -> Bool {
        await withCheckedContinuation { continuation in
            queue.async { self.start(continuation) }
        }
    }

    /// On `queue`.
    private func start(_ continuation: CheckedContinuation<Bool, Never>) {
        self.continuation = continuation
        for descriptor in descriptors {
            let source = DispatchSource.makeReadSource(fileDescriptor: descriptor, queue: queue)
            source.setEventHandler { [unowned self] in finish(exited: true) }
            source.setCancelHandler { close(descriptor) }
            sources.append(source)
            source.resume()
        }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        let (seconds, attoseconds) = timeout.components
        timer.schedule(deadline: .now() + .nanoseconds(Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)))
        timer.setEventHandler { [unowned self] in finish(exited: false) }
        sources.append(timer)
        timer.resume()
    }

    /// On `queue`: the first event wins; every source is cancelled (closing its pidfd).
    private func finish(exited: Bool) {
        guard let continuation else { return }
        self.continuation = nil
        for source in sources { source.cancel() }
        sources.removeAll()
        continuation.resume(returning: exited)
    }
}
