import CloudAgentCore
import Foundation
import Testing

/// Light checks of the in-memory store; the conformance suite that holds every backend to the
/// same behaviour lives with the store backends.
@Suite("In-memory session store")
struct InMemorySessionStoreTests {
    func storeWithSession(_ id: SessionID = Fixture.sessionId) async throws -> any SessionStore {
        let store: any SessionStore = InMemorySessionStore()
        try await store.insertSession(SessionRecord(id: id, owner: .local, createdAt: Fixture.t0, spec: SessionSpec(prompt: "say hello")))
        return store
    }

    @Test("a second active execution is refused with the active one's id, and nothing of that change lands")
    func oneActiveExecutionPerSession() async throws {
        let store = try await storeWithSession()
        let first = Fixture.execution(acceptedAt: Fixture.at(seconds(1)))
        try await store.commit(SessionChange(sessionId: Fixture.sessionId, newExecution: first))

        let second = Fixture.execution(acceptedAt: Fixture.at(seconds(2)))
        let refused = SessionChange(
            sessionId: Fixture.sessionId, newExecution: second,
            events: [NewEvent(executionId: second.id, type: EventType.executionStarted, at: Fixture.at(seconds(2)))]
        )
        await #expect(throws: StoreError.executionInProgress(first.id)) { try await store.commit(refused) }
        #expect(try await store.execution(second.id) == nil)
        #expect(try await store.lastEventId(of: Fixture.sessionId) == 0)
        #expect(try await store.latestExecution(of: Fixture.sessionId) == first)

        // Once the first has ended, the next one is accepted, even in the same change.
        var ended = first
        try ended.markRunning(at: Fixture.at(seconds(3)))
        try ended.end(.completed, at: Fixture.at(seconds(4)), exitCode: 0, reportedByRuntime: true)
        try await store.commit(SessionChange(sessionId: Fixture.sessionId, newExecution: second, executions: [ended]))
        #expect(try await store.executions(of: Fixture.sessionId).map(\.id) == [first.id, second.id])
    }

    @Test("events are numbered 1, 2, 3 … per session, across commits")
    func eventsAreNumberedPerSession() async throws {
        let store = try await storeWithSession()
        try await store.insertSession(SessionRecord(id: Fixture.otherSessionId, owner: .local, createdAt: Fixture.t0, spec: SessionSpec(prompt: "say hi")))

        func events(_ types: String..., at offset: Int64) -> [NewEvent] {
            types.map { NewEvent(type: $0, at: Fixture.at(offset)) }
        }

        let firstBatch = try await store.commit(
            SessionChange(
                sessionId: Fixture.sessionId, events: events(EventType.runtimeStarted, EventType.executionStarted, EventType.executionRunning, at: seconds(1))
            ))
        #expect(firstBatch.map(\.id) == [1, 2, 3])
        #expect(firstBatch.allSatisfy { $0.sessionId == Fixture.sessionId })

        let otherSession = try await store.commit(SessionChange(sessionId: Fixture.otherSessionId, events: events(EventType.runtimeStarted, at: seconds(2))))
        #expect(otherSession.map(\.id) == [1])

        let secondBatch = try await store.commit(
            SessionChange(sessionId: Fixture.sessionId, events: events(EventType.agent, EventType.executionCompleted, at: seconds(3))))
        #expect(secondBatch.map(\.id) == [4, 5])
        #expect(try await store.lastEventId(of: Fixture.sessionId) == 5)
        #expect(try await store.events(of: Fixture.sessionId, EventQuery(afterId: 3)).map(\.type) == [EventType.agent, EventType.executionCompleted])
    }

    @Test("a change to an unknown session is refused")
    func unknownSession() async throws {
        let store = try await storeWithSession()
        await #expect(throws: StoreError.sessionNotFound(Fixture.otherSessionId)) {
            try await store.commit(SessionChange(sessionId: Fixture.otherSessionId, events: [NewEvent(type: EventType.agent, at: Fixture.t0)]))
        }
    }
}
