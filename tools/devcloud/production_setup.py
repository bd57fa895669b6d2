"""Idempotent setup of the PRODUCTION-shaped dev cloud (tools/devcloud/production.sh).

Runs in the cinder venv (keystoneclient and keystoneauth1 are cinder
dependencies).  It reuses the default shape's setup scripts with the
production shape's ports, then adds what production has and the default
shape does not:

* ``keystone``: user ``cgsnap`` has the ``member`` role only (no ``reader``
  grant; member implies reader through Keystone's implied roles);
  a second region ``RegionNoImage`` whose catalog has the block-storage
  endpoints and NO image service (the cloud entry ``devcloud-prod-noimage``);
* ``cinder``: per-volume-type quotas in force for project ``cgsnap``
  (``volumes_fake``, ``snapshots_fake``, ``gigabytes_fake`` below the
  project-wide limits, so the per-type limit is the one that bites).

usage: python production_setup.py keystone|cinder
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cinder_setup  # noqa: E402
import keystone_setup  # noqa: E402

KS_PORT = os.environ.get('DEVCLOUD_PROD_KS_PORT', '25000')
CINDER_PORT = os.environ.get('DEVCLOUD_PROD_CINDER_PORT', '28776')
GLANCE_PORT = os.environ.get('DEVCLOUD_PROD_GLANCE_PORT', '29292')
AUTH_URL = 'http://127.0.0.1:%s/v3' % KS_PORT
VOLUME_URL = 'http://127.0.0.1:%s/v3/%%(project_id)s' % CINDER_PORT
NOIMAGE_REGION = 'RegionNoImage'
# per-type limits for project cgsnap (project-wide: 200 / 200 / 5000)
TYPE_QUOTAS = {'volumes_fake': 150, 'snapshots_fake': 150, 'gigabytes_fake': 3000}


def setup_keystone():
    keystone_setup.AUTH_URL = AUTH_URL
    keystone_setup.USERS = dict(keystone_setup.USERS,
                                cgsnap=('cgsnap-dev', 'cgsnap', ['member']))
    keystone_setup.SERVICES = {
        'volumev3': ('cinderv3', VOLUME_URL),
        'block-storage': ('cinder', VOLUME_URL),
        'image': ('glance', 'http://127.0.0.1:%s' % GLANCE_PORT),
    }
    keystone_setup.main()

    from keystoneauth1 import session
    from keystoneauth1.identity import v3
    from keystoneclient.v3 import client
    auth = v3.Password(auth_url=AUTH_URL, username='admin',
                       password=keystone_setup.ADMIN_PASSWORD,
                       project_name='admin', user_domain_id='default',
                       project_domain_id='default')
    ks = client.Client(session=session.Session(auth=auth))
    if NOIMAGE_REGION not in {r.id for r in ks.regions.list()}:
        ks.regions.create(id=NOIMAGE_REGION, description='devcloud-prod: no image service')
    for svc in ks.services.list():
        if svc.type not in ('volumev3', 'block-storage'):
            continue
        have = {e.interface for e in ks.endpoints.list(service=svc, region=NOIMAGE_REGION)}
        for iface in ('public', 'internal', 'admin'):
            if iface not in have:
                ks.endpoints.create(svc, VOLUME_URL, interface=iface, region=NOIMAGE_REGION)
    print('keystone (production shape) ok: region %s has no image service'
          % NOIMAGE_REGION, file=sys.stderr)


def setup_cinder():
    cinder_setup.AUTH_URL = AUTH_URL
    cinder_setup.main()

    from keystoneauth1 import session
    from keystoneauth1.identity import v3
    auth = v3.Password(auth_url=AUTH_URL, username='admin',
                       password=keystone_setup.ADMIN_PASSWORD,
                       project_name='admin', user_domain_id='default',
                       project_domain_id='default')
    sess = session.Session(auth=auth)
    ep = dict(service_type='volumev3', interface='public', region_name='RegionOne')
    project_id = next(p['id'] for p in sess.get(
        AUTH_URL + '/projects?name=cgsnap').json()['projects'])
    sess.put('/os-quota-sets/%s' % project_id, endpoint_filter=ep,
             json={'quota_set': TYPE_QUOTAS})
    got = sess.get('/os-quota-sets/%s' % project_id, endpoint_filter=ep).json()['quota_set']
    wrong = {k: got.get(k) for k, v in TYPE_QUOTAS.items() if got.get(k) != v}
    if wrong:
        sys.exit('per-type quotas not in force: %s' % wrong)
    print('cinder (production shape) ok: per-type quotas %s' % TYPE_QUOTAS, file=sys.stderr)


if __name__ == '__main__':
    {'keystone': setup_keystone, 'cinder': setup_cinder}[sys.argv[1]]()
