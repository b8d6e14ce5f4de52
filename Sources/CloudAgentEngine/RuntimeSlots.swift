import CloudAgentCore

/// The runtime slots of this host (`CLOUD_AGENT_MAX_RUNTIMES`). A session holds a slot from the
/// moment its launch takes one until its stop is recorded, so a `stopping` runtime still counts:
/// processes on this host never exceed the limit. Starts are *admitted* at the API (or refused
/// with 503) and take their slot later, in the order admitted, when their launch is ready; a
/// start admitted against a runtime that is stopping waits in its launch, never in the API.
package actor RuntimeSlots {
    package let limit: Int
    private var holders: Set<SessionID> = []
    private var stopping: Set<SessionID> = []
    /// Admitted starts that have not taken their slot yet, in order.
    private var admitted: [SessionID] = []
    /// Launches in flight: a release meanwhile is done when the launch ends.
    private var launching: Set<SessionID> = []
    private var releaseAfterLaunch: Set<SessionID> = []
    private var waiters: [(id: SessionID, continuation: CheckedContinuation<Void, Never>)] = []

    package init(limit: Int) { self.limit = max(1, limit) }

    /// How an admission went.
    package enum Admission: Equatable {
        /// The start will get a slot (at once, or when a stopping runtime's is freed).
        case admitted
        /// Every slot is held by a runtime that is not stopping: a victim must be stopped first.
        case full(candidates: [SessionID])
    }

    /// Admits a start for `id` when a slot is free or will be (a stopping runtime's), counting
    /// the starts admitted before it.
    package func admit(_ id: SessionID) -> Admission {
        if holders.contains(id) || admitted.contains(id) { return .admitted }
        let freeing = stopping.count
        if holders.count - freeing + admitted.count < limit {
            admitted.append(id)
            return .admitted
        }
        return .full(candidates: holders.subtracting(stopping).sorted { $0.rawValue < $1.rawValue })
    }

    /// An admitted start that will not launch after all.
    package func withdraw(_ id: SessionID) {
        admitted.removeAll { $0 == id }
        wakeWaiters()
    }

    /// A holder's stop was decided: its slot will be free.
    package func markStopping(_ id: SessionID) {
        if holders.contains(id) { stopping.insert(id) }
    }

    /// Takes a slot for `id`'s launch, waiting (in admission order) while every slot is held.
    package func acquire(_ id: SessionID) async {
        while !take(id) {
            await withCheckedContinuation { waiters.append((id, $0)) }
        }
        launching.insert(id)
    }

    private func take(_ id: SessionID) -> Bool {
        if holders.contains(id) { return true }
        guard holders.count < limit else { return false }
        // Starts admitted before this one go first.
        let ahead = admitted.firstIndex(of: id) ?? admitted.count
        guard holders.count + ahead < limit else { return false }
        admitted.removeAll { $0 == id }
        holders.insert(id)
        return true
    }

    /// The launch that took `id`'s slot is over; `kept` false gives the slot back (nothing was
    /// launched, or the process was discarded).
    package func launchEnded(_ id: SessionID, kept: Bool) {
        launching.remove(id)
        if !kept || releaseAfterLaunch.remove(id) != nil { free(id) }
    }

    /// `id`'s runtime is stopped (or its session gone): its slot is free — once its launch, if
    /// one is in flight, has ended.
    package func release(_ id: SessionID) {
        admitted.removeAll { $0 == id }
        if launching.contains(id) {
            releaseAfterLaunch.insert(id)
        } else {
            free(id)
        }
    }

    /// A runtime found running at start-up holds its slot.
    package func hold(_ id: SessionID, stopping isStopping: Bool) {
        holders.insert(id)
        if isStopping { stopping.insert(id) }
    }

    private func free(_ id: SessionID) {
        holders.remove(id)
        stopping.remove(id)
        wakeWaiters()
    }

    private func wakeWaiters() {
        let woken = waiters
        waiters.removeAll()
        for waiter in woken { waiter.continuation.resume() }
    }

    /// Slots held now (runtimes launching, running or stopping).
    package var heldCount: Int { holders.count }
    /// Launches waiting for a slot.
    package var waitingCount: Int { waiters.count }
}
