"""Smoke test of the running dev cloud (devcloud.sh verify).

Runs in .devcloud/venvs/client (openstacksdk + python-cinderclient +
python-glanceclient) as user cgsnap, exercising exactly what cgsnap needs:
volumes, attachments (in-use), snapshots of in-use volumes at 3.71 with
metadata + server-side metadata filter, quotas via the admin cloud, and
glance image upload/download/properties.
"""

import hashlib
import io
import json
import os
import sys
import time
import uuid

import openstack
from cinderclient import client as cinder_client
from cinderclient import exceptions as cinder_exc
from glanceclient import client as glance_client

MV = '3.71'
T0 = time.monotonic()


def say(msg):
    print('[verify %6.2fs] %s' % (time.monotonic() - T0, msg), file=sys.stderr)


def wait(get, want, timeout=60, what='resource'):
    t = time.monotonic()
    while True:
        obj = get()
        st = obj['status'] if isinstance(obj, dict) else obj.status
        if st == want:
            return obj, time.monotonic() - t
        if st.startswith('error') or time.monotonic() - t > timeout:
            raise SystemExit('%s: status %s (wanted %s)' % (what, st, want))
        time.sleep(0.1)


def main():
    conn = openstack.connect(cloud='devcloud')
    admin = openstack.connect(cloud='devcloud-admin')
    sess = conn.session
    project_id = conn.current_project_id
    say('authenticated as cgsnap, project %s' % project_id)

    # ---------------- cinder via python-cinderclient ----------------
    cc = cinder_client.Client(MV, session=sess, region_name='RegionOne')
    set_id = 'verify-%s' % uuid.uuid4().hex[:8]
    server = str(uuid.uuid4())
    vols = [cc.volumes.create(1, name='%s-%d' % (set_id, i)) for i in range(2)]
    for v in vols:
        _, dt = wait(lambda v=v: cc.volumes.get(v.id), 'available',
                     what='volume')
        say('volume %s available after %.2fs' % (v.id, dt))

    for v in vols:
        att = cc.attachments.create(v.id, None, instance_id=server)
        cc.attachments.complete(att['id'])  # create() returns a dict
    for v in vols:
        v = cc.volumes.get(v.id)
        assert v.status == 'in-use', v.status
        sids = [a['server_id'] for a in v.attachments]
        assert sids == [server], sids
    say('both volumes in-use, attachments[].server_id == %s' % server)

    snaps = []
    for v in vols:
        snaps.append(cc.volume_snapshots.create(
            v.id, name=set_id, metadata={'cgsnap_set_id': set_id}))
    for s in snaps:
        _, dt = wait(lambda s=s: cc.volume_snapshots.get(s.id), 'available',
                     what='snapshot')
        say('snapshot %s (of in-use volume, no force) available after %.2fs'
            % (s.id, dt))

    # decoy snapshot without the metadata key
    decoy = cc.volume_snapshots.create(vols[0].id, name='decoy')
    wait(lambda: cc.volume_snapshots.get(decoy.id), 'available')

    found = cc.volume_snapshots.list(
        search_opts={'metadata': {'cgsnap_set_id': set_id}})
    assert sorted(s.id for s in found) == sorted(s.id for s in snaps), found
    say('cinderclient metadata filter returned exactly %d snapshots' %
        len(found))

    # raw REST (what openstacksdk users would do)
    r = conn.block_storage.get(
        '/snapshots/detail',
        params={'metadata': json.dumps({'cgsnap_set_id': set_id})},
        microversion=MV)
    got = [s['id'] for s in r.json()['snapshots']]
    assert sorted(got) == sorted(s.id for s in snaps), got
    say('raw GET /snapshots/detail?metadata=... filtered server-side OK')

    # openstacksdk path: snapshot of an in-use volume via raw post @3.71
    r = conn.block_storage.post('/snapshots', json={'snapshot': {
        'volume_id': vols[1].id, 'name': 'sdk-' + set_id,
        'metadata': {'cgsnap_set_id': set_id + '-sdk'}}}, microversion=MV)
    sdk_snap = r.json()['snapshot']
    wait(lambda: conn.block_storage.get_snapshot(sdk_snap['id']),
         'available', what='sdk snapshot')
    say('openstacksdk raw POST /snapshots @%s on in-use volume OK' % MV)

    # quotas: admin lowers cgsnap's snapshot quota, then restores it
    ac = cinder_client.Client(MV, session=admin.session,
                              region_name='RegionOne')
    before = ac.quotas.get(project_id).snapshots
    # cinder refuses a limit below current usage (HTTP 400), so "exhaust"
    # the quota by setting it to exactly the current usage.
    usage = ac.quotas.get(project_id, usage=True).snapshots
    used = usage['in_use'] + usage['reserved']
    say('quota: usage %s, default limit %s -> setting limit %d'
        % (usage, before, used))
    ac.quotas.update(project_id, snapshots=used)
    try:
        extra = cc.volume_snapshots.create(vols[0].id, name='over-quota')
        raise SystemExit('quota not enforced (usage %s, created %s)'
                         % (usage, extra.id))
    except cinder_exc.OverLimit as e:
        say('lowered quota enforced: %s' % e)
    finally:
        ac.quotas.update(project_id, snapshots=before)
        say('quota restored to %s' % before)

    snap_ids = [s.id for s in snaps] + [decoy.id, sdk_snap['id']]
    for sid in snap_ids:
        cc.volume_snapshots.delete(sid)
    t = time.monotonic()
    for sid in snap_ids:
        while True:
            try:
                cc.volume_snapshots.get(sid)
            except cinder_exc.NotFound:
                break
            if time.monotonic() - t > 30:
                raise SystemExit('snapshot %s not deleted' % sid)
            time.sleep(0.1)
    say('snapshots deleted after %.2fs' % (time.monotonic() - t))
    for v in vols:
        for a in cc.attachments.list(search_opts={'volume_id': v.id}):
            cc.attachments.delete(a.id)
    for v in vols:
        wait(lambda v=v: cc.volumes.get(v.id), 'available', what='detach')
        cc.volumes.delete(v.id)
    say('cleanup done (snapshots, attachments, volumes)')

    # ---------------- glance ----------------
    gc = glance_client.Client('2', session=sess)
    data = os.urandom(5 * 1024 * 1024)
    img = gc.images.create(name=set_id, disk_format='raw',
                           container_format='bare', cgsnap_set_id=set_id)
    gc.images.upload(img.id, io.BytesIO(data))  # sent chunked
    img = gc.images.get(img.id)
    assert img.status == 'active', img.status
    out = b''.join(gc.images.data(img.id))
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    listed = list(gc.images.list(filters={'cgsnap_set_id': set_id}))
    assert [i.id for i in listed] == [img.id], listed
    say('glanceclient: chunked upload 5 MiB, download, property filter OK')

    sdk_img = conn.image.create_image(
        name=set_id + '-sdk', data=data[:1024 * 1024], disk_format='raw',
        container_format='bare', cgsnap_set_id=set_id + '-sdk',
        allow_duplicates=True, wait=True)
    # conn.image.images() drops unknown kwargs (filters client-side at
    # best), so filter on a custom property with a raw GET instead:
    got = conn.image.get('/images', params={
        'cgsnap_set_id': set_id + '-sdk'}).json()['images']
    assert [i['id'] for i in got] == [sdk_img.id], got
    say('openstacksdk image create/upload + raw property filter OK')
    gc.images.delete(img.id)
    conn.image.delete_image(sdk_img.id)
    say('ALL OK')


if __name__ == '__main__':
    main()
