import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentProtocol
@testable import CloudAgentEngine
@testable import CloudAgentServer
import Foundation
import Synchronization
import Testing

/// The server's hand-made concurrency primitives, each on its own.
@Suite("Concurrency primitives")
struct ConcurrencyPrimitiveTests {
    final class Log: Sendable {
        private let entries = Mutex<[String]>([])
        private let inside = Mutex<[Int: Int]>([:])
        private let most = Mutex(0)
        func append(_ entry: String) { entries.withLock { $0.append(entry) } }
        var all: [String] { entries.withLock { $0 } }
        func enter(_ key: Int) {
            let now = inside.withLock {
                $0[key, default: 0] += 1; return $0[key]!
            }; most.withLock { $0 = max($0, now) }
        }
        func leave(_ key: Int) { inside.withLock { $0[key, default: 1] -= 1 } }
        var mostInsideOneKey: Int { most.withLock { $0 } }
    }

    @Test("KeyedLocks: one holder per key at a time; every waiter gets its turn")
    func oneHolderPerKeyInOrder() async {
        let locks = KeyedLocks<Int>()
        let log = Log()
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<20 {
                group.addTask {
                    await locks.withLock(index % 2) {
                        log.enter(index % 2)
                        log.append("\(index)")
                        try? await Task.sleep(for: .milliseconds(2))
                        log.leave(index % 2)
                    }
                }
            }
        }
        #expect(log.mostInsideOneKey == 1)
        #expect(log.all.compactMap(Int.init).sorted() == Array(0..<20))
    }

    @Test("KeyedLocks: a key held for long holds no other key, and a throwing body releases its key")
    func keysAreIndependent() async throws {
        let locks = KeyedLocks<String>()
        let released = Mutex(false)
        let slow = Task {
            await locks.withLock("a") {
                while !released.withLock({ $0 }) { try? await Task.sleep(for: .milliseconds(5)) }
            }
        }
        try await Task.sleep(for: .milliseconds(50))
        let started = ContinuousClock.now
        await locks.withLock("b") {}
        #expect(ContinuousClock.now - started < .milliseconds(500))
        struct Boom: Error {}
        await #expect(throws: Boom.self) { try await locks.withLock("c") { throw Boom() } }
        await locks.withLock("c") {}
        released.withLock { $0 = true }
        await slow.value
        await locks.withLock("a") {}
    }

    static func frame(_ n: Int64) -> RuntimeMessage { .pong(nonce: n) }

    @Test("InboundQueue: frames in order, in batches of at most max; a full queue holds the producer until the consumer takes some")
    func inboundQueueOrderAndBound() async throws {
        let queue = InboundQueue(limit: 4)
        let pushed = Mutex(0)
        let producer = Task {
            for n in 1...10 {
                guard await queue.push(Self.frame(Int64(n))) else { return }
                pushed.withLock { $0 += 1 }
            }
            queue.finish(throwing: nil)
        }
        try await eventually(within: 5, "the queue to fill") { pushed.withLock { $0 } == 4 }
        try await Task.sleep(for: .milliseconds(50))
        #expect(pushed.withLock { $0 } == 4, "pushed past the bound")
        var received: [RuntimeMessage] = []
        while let batch = try await queue.next(max: 3) {
            #expect(batch.count <= 3)
            received += batch
        }
        #expect(received == (1...10).map { Self.frame(Int64($0)) })
        await producer.value
    }

    @Test("InboundQueue: a reading failure comes after the frames before it; closing lets a waiting producer go and refuses the rest")
    func inboundQueueFailureAndClose() async throws {
        struct ReadFailed: Error {}
        let queue = InboundQueue(limit: 8)
        #expect(await queue.push(Self.frame(1)))
        queue.finish(throwing: ReadFailed())
        #expect(try await queue.next(max: 10) == [Self.frame(1)])
        await #expect(throws: ReadFailed.self) { try await queue.next(max: 10) }

        let full = InboundQueue(limit: 1)
        #expect(await full.push(Self.frame(1)))
        let waiting = Task { await full.push(Self.frame(2)) }
        try await Task.sleep(for: .milliseconds(50))
        full.close()
        #expect(await waiting.value == false)
        #expect(await full.push(Self.frame(3)) == false)
        #expect(try await full.next(max: 10) == nil)
    }
}
