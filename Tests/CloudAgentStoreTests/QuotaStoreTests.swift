import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import Synchronization
import Testing

/// The per-user quota's reads: an owner's live runtimes (starting or running), counted by an
/// insert that may be refused, and by a transaction on a session whose runtime is not up.
@Suite("Store: the per-user quota")
struct QuotaStoreTests {
    @Test(arguments: StoreBackend.allCases)
    func liveRuntimesAreCountedPerOwner(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            func starting(_ owner: Owner) throws -> SessionRecord {
                var session = Fixture.session(owner: owner)
                try session.runtime.requestStart(at: Fixture.date(1))
                return session
            }
            let first = try starting(Fixture.alice)
            try await store.insertSession(first, wakeUp: nil, maxOwnerRuntimes: 2)
            try await store.insertSession(try starting(Fixture.alice), wakeUp: nil, maxOwnerRuntimes: 2)
            // Another owner's runtimes do not count.
            try await store.insertSession(try starting(Fixture.aliceAtX), wakeUp: nil, maxOwnerRuntimes: 2)
            await #expect(throws: StoreError.quotaExceeded(2)) {
                try await store.insertSession(try starting(Fixture.alice), wakeUp: nil, maxOwnerRuntimes: 2)
            }
            // A session whose runtime is not started yet (never started) does not count either.
            try await store.insertSession(Fixture.session(owner: Fixture.alice), wakeUp: nil, maxOwnerRuntimes: nil)
            #expect(try await store.liveSessions(of: Fixture.alice).count == 2)

            // A transaction on a stopped session reads the count (for the rules); on a live one it does not.
            let stopped = try await store.insertFixtureSession()
            let seen = Mutex<[Int?]>([])
            for id in [stopped.id, first.id] {
                _ = try await store.update(id, forRules: true) { state in
                    seen.withLock { $0.append(state?.ownerRuntimes) }
                    return Decision(output: ())
                }
            }
            #expect(seen.withLock { $0 } == [2, nil])
        }
    }
}
