"""Idempotent post-start cinder setup: volume type ``fake`` (the default)
and a public generic group type ``fake-group`` (for group snapshots; the
built-in ``default_cgsnapshot_type`` is reserved for migrated CGs).

Runs in the cinder venv (keystoneauth1 is a cinder dependency) once
keystone and cinder answer.
"""

import os
import sys

from keystoneauth1 import session
from keystoneauth1.identity import v3

AUTH_URL = 'http://127.0.0.1:15000/v3'
TYPE = 'fake'
BACKEND = 'fake'
GROUP_TYPE = 'fake-group'


def main():
    auth = v3.Password(auth_url=AUTH_URL, username='admin',
                       password=os.environ.get('DEVCLOUD_ADMIN_PASSWORD',
                                               'devcloud-admin'),
                       project_name='admin', user_domain_id='default',
                       project_domain_id='default')
    sess = session.Session(auth=auth)
    ep = dict(service_type='volumev3', interface='public')
    hdr = {'OpenStack-API-Version': 'volume 3.62'}

    types = sess.get('/types?is_public=None', endpoint_filter=ep,
                     headers=hdr).json()['volume_types']
    vt = next((t for t in types if t['name'] == TYPE), None)
    if vt is None:
        vt = sess.post('/types', endpoint_filter=ep, headers=hdr, json={
            'volume_type': {'name': TYPE, 'os-volume-type-access:is_public':
                            True, 'description': 'devcloud fake backend'}},
        ).json()['volume_type']
    sess.post('/types/%s/extra_specs' % vt['id'], endpoint_filter=ep,
              headers=hdr, json={'extra_specs': {
                  'volume_backend_name': BACKEND}})

    gtypes = sess.get('/group_types?is_public=None', endpoint_filter=ep,
                      headers=hdr).json()['group_types']
    gt = next((t for t in gtypes if t['name'] == GROUP_TYPE), None)
    if gt is None:
        gt = sess.post('/group_types', endpoint_filter=ep, headers=hdr,
                       json={'group_type': {
                           'name': GROUP_TYPE, 'is_public': True,
                           'description': 'devcloud generic group type'}},
                       ).json()['group_type']
    print('cinder setup ok: volume type %s id=%s, group type %s id=%s'
          % (TYPE, vt['id'], GROUP_TYPE, gt['id']), file=sys.stderr)


if __name__ == '__main__':
    main()
